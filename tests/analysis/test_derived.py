"""Derived quantities against their closed forms and against direct numerical minimisation."""
import dataclasses

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

from scaling_grid.analysis import derived as dv
from scaling_grid.analysis import laws, run_fit
from scaling_grid.analysis import synthetic as S

UNI = laws.get("universality")
c_tau, c_m, c_l, L0 = 0.6, 20.0, 0.4, 0.8
THETA = np.array([c_tau, c_m, c_l, L0])


def shape_term(m, N, cm=c_m, cl=c_l, a=1.0, b=1.0):
    l = N / (12 * m * m)
    return cm * m ** -a + cl * l ** -b


@pytest.mark.parametrize("N", [1e6, 3e7, 1e9])
def test_optimal_shape_matches_numerical_minimisation(N):
    res = minimize_scalar(lambda lm: shape_term(np.exp(lm), N), bounds=(0, 12), method="bounded",
                          options={"xatol": 1e-10})
    m = np.exp(res.x)
    l = N / (12 * m * m)
    ctx = dv.Context(N_ref=N)
    sc, _ = dv.derived(UNI, THETA, ctx)
    assert sc["m_over_l_star"][0] == pytest.approx(m / l, rel=1e-5)
    assert sc["m_over_l_star"][0] == pytest.approx(c_m / (2 * c_l))
    assert sc["c_N"][0] * N ** (-1 / 3) == pytest.approx(res.fun, rel=1e-8)
    assert c_m / m == pytest.approx(2 * c_l / l, rel=1e-4)      # the two terms' balance


def test_general_exponent_shape_matches_numerical_minimisation():
    a, b, N = 0.8, 1.3, 5e7
    m, l, S_ = dv.optimal_shape(c_m, c_l, a, b, N)
    res = minimize_scalar(lambda lm: shape_term(np.exp(lm), N, a=a, b=b), bounds=(0, 12), method="bounded",
                          options={"xatol": 1e-10})
    assert m == pytest.approx(np.exp(res.x), rel=1e-5) and S_ == pytest.approx(res.fun, rel=1e-9)
    # (m/l)* drifts as N^((b-a)/(a+2b))
    m2, l2, _ = dv.optimal_shape(c_m, c_l, a, b, 10 * N)
    assert np.log10((m2 / l2) / (m / l)) == pytest.approx((b - a) / (a + 2 * b), rel=1e-9)


def test_off_optimal_penalty_and_its_five_percent_band():
    N = 1e8
    r_star = c_m / (2 * c_l)
    S_star = shape_term((c_m * N / (24 * c_l)) ** (1 / 3), N)
    for x in (0.2, 0.5, 1.0, 1.9, 5.0):
        m = (x * r_star * N / 12) ** (1 / 3)          # m/l = x r*  with  N = 12 m^2 l
        assert shape_term(m, N) / S_star == pytest.approx(dv.shape_penalty(x), rel=1e-10)
    lo, hi = dv.penalty_band(0.05)
    assert lo == pytest.approx(0.50, abs=0.01) and hi == pytest.approx(1.91, abs=0.01)
    assert dv.shape_penalty(lo) == pytest.approx(1.05)


def test_closed_frontier_matches_numerical_frontier_with_six_nd():
    k = 4.4e-7    # tau per token
    C = np.array([1e15, 1e17, 1e19])
    ctx = dv.Context(t_per_token=k, N_ref=1e7, C_ref=C)
    sc, fr = dv.derived(UNI, THETA, ctx)
    num = dv.numerical_frontier(UNI, THETA, C, k, dv.six_n_flops())
    for key in ("N_star", "D_star", "L_star"):
        np.testing.assert_allclose(num[key][0], fr[key][0], rtol=2e-3)
    c_N, c_D = sc["c_N"][0], sc["c_D"][0]
    assert c_D == pytest.approx(c_tau * k ** (-1 / 3))
    np.testing.assert_allclose(fr["N_star"][0], (c_N / c_D) ** 1.5 * (C / 6) ** 0.5)
    np.testing.assert_allclose(fr["L_star"][0], L0 + 2 * np.sqrt(c_N * c_D) * (C / 6) ** (-1 / 6))
    assert sc["D_over_N_star"][0] == pytest.approx((c_D / c_N) ** 3)
    # at the optimum the model and data terms are equal
    np.testing.assert_allclose(c_N * fr["N_star"][0] ** (-1 / 3), c_D * fr["D_star"][0] ** (-1 / 3))


def test_numerical_frontier_with_real_flops_matches_direct_minimisation():
    flops = dv.FlopsModel(np.array([72.0, 3072.0, 1536.0]), 0.0, 0)
    k, C = 4.4e-7, np.array([1e14, 1e18])
    num = dv.numerical_frontier(UNI, THETA, C, k, flops)
    for i, c in enumerate(C):
        f = lambda z: UNI.predict(THETA, {"m": np.exp(z[0]), "l": np.exp(z[1]),
                                          "tau": k * c / flops(np.exp(z[0]), np.exp(z[1]))}, outer=False)
        best = min((minimize(f, z0, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-15,
                                                                   "maxiter": 20000})
                    for z0 in ([4.0, 1.0], [6.0, 3.0])), key=lambda r: r.fun)
        assert num["L_star"][0, i] == pytest.approx(best.fun, rel=1e-7)
        assert num["m_star"][0, i] == pytest.approx(np.exp(best.x[0]), rel=2e-3)
        assert num["l_star"][0, i] == pytest.approx(np.exp(best.x[1]), rel=2e-3)


def test_chinchilla_frontier_matches_numerical_minimisation():
    law = laws.get("chinchilla")
    E, A, B, al, be = 1.69, 406.4, 410.7, 0.34, 0.28
    theta = np.array([A, B, E, al, be])
    C = np.array([1e20, 1e23])
    _, fr = dv.derived(law, theta, dv.Context(t_per_token=1.0, C_ref=C))
    for i, c in enumerate(C):
        f = lambda lN: E + A * np.exp(lN) ** -al + B * (c / (6 * np.exp(lN))) ** -be
        res = minimize_scalar(f, bounds=(5, 35), method="bounded", options={"xatol": 1e-12})
        assert fr["N_star"][0, i] == pytest.approx(np.exp(res.x), rel=1e-4)
        assert fr["L_star"][0, i] == pytest.approx(res.fun, rel=1e-10)
    G = (al * A / (be * B)) ** (1 / (al + be))
    assert fr["N_star"][0, 0] == pytest.approx(G * (C[0] / 6) ** (be / (al + be)))


def test_tau_to_tokens_conversion_equals_a_fit_in_tokens():
    """tau_lr = k tokens for every run here, so c_D from the tau fit must equal c_time of a fit in
    tokens, and D*/N* must agree."""
    tab = S.universality_table(seed=0)
    r_tau = run_fit(tab, time="tau_lr", n_boot=0, checks=False).variants["gpt2"]
    r_tok = run_fit(tab, time="tokens", n_boot=0, checks=False).variants["gpt2"]
    assert r_tau.derived["c_D"][0] == pytest.approx(r_tok.params["c_tau"], rel=1e-6)
    assert r_tau.derived["D_over_N_star"][0] == pytest.approx(r_tok.derived["D_over_N_star"][0], rel=1e-5)
    conv = r_tau.ctx.conversion
    assert conv["B_tok"] == pytest.approx(4096) and conv["eta_max"] == pytest.approx(3e-3)
    assert conv["f_bar"] == pytest.approx(0.6)
    assert "B_tok/(eta_max f_bar)" in conv["statement"]


def test_derived_intervals_come_from_the_bootstrap():
    r = run_fit(S.universality_table(seed=1), n_boot=200, checks=False).variants["gpt2"]
    ratio = r.samples[:, 1] / (2 * r.samples[:, 2])
    np.testing.assert_allclose(r.derived_samples["m_over_l_star"], ratio)
    iv = r.derived_interval("m_over_l_star")
    assert iv["lo"] < c_m / (2 * c_l) < iv["hi"]
    assert iv["hi"] - iv["lo"] > 0
    ctx = dataclasses.replace(r.ctx)
    assert ctx.flops is not None and ctx.flops.max_rel_error < 1e-9
