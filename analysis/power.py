"""How large an exponent difference the cross-variant universality test would detect (issue 23).

A CONSISTENT verdict says only that these points do not reject shared exponents; it is worth as
much as the test's power on this design. :func:`detectable_difference` finds, for each exponent,
the smallest difference between variants that the test rejects in at least ``POWER`` (80%) of
synthetic tables drawn on the same points, by simulation from the fitted law:

- **Truth**: the shared-exponent fit (per-variant coefficients, one set of exponents). For the
  exponent under study, one variant (the first after the reference) gets ``exponent + delta``, and
  that term's coefficient is rescaled so the term keeps its value at the geometric mean of its
  variable over that variant's points: a change of slope, not of level (a level shift is what the
  coefficients absorb).
- **Noise**: log L = the truth's log prediction at every point + sigma z, z standard normal and
  independent across points, sigma the residual sd of the per-variant fit (sqrt(RSS_separate /
  (n - p)), the F-test's own denominator; it holds any misfit of the law, so it errs wide).
- **Test**: each synthetic table goes through the same F-test as the data: the same least squares
  on log L, solved by Levenberg-Marquardt started at the truth (:meth:`joint.Joint.fit_near`, one
  start per fit); the rejection rate at the test's level is the power at delta.
- **Search**: common random numbers (the same ``draws`` noise tables, seeded, at every delta) so the
  power rises smoothly with delta. Start at 3 Wald standard errors of the difference (the 80%-power
  difference of a single z-test at level 0.05 is 2.8), double until the power reaches 80% (at most
  ``MAX_DOUBLINGS`` times, else infinite: not detectable within 2^6 x the start), halve while it
  holds, then ``BISECTIONS`` geometric bisections of the bracket. Reported: the smallest tried
  delta whose power is at least 80%, its bracket, and every (delta, power) tried.

Counts: ``draws`` synthetic tables per delta (``fit`` uses ``DRAWS`` = 40; a rate near 0.8 then has
a Monte Carlo sd of sqrt(0.8 x 0.2 / 40) = 0.063), typically 5-7 deltas per exponent. Only
positive deltas are injected; the test is symmetric to first order. It assumes independent points
like the F-test (several points per run are correlated: the real power is lower).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .joint import Joint, f_test
from .laws import Law
from .points import Points

POWER = 0.8
DRAWS = 40            # synthetic tables per delta in `fit` (module docstring)
START_SE = 3.0        # the search starts at this many Wald standard errors of the difference
MAX_DOUBLINGS = 6
BISECTIONS = 3


class _Simulator:
    """The F-test's rejection rate at an injected exponent difference, on fixed noise draws."""

    def __init__(self, fl: Law, pts: list[Points], x_shared: np.ndarray, sigma: float, level: float,
                 draws: int, seed: int):
        self.fl, self.level = fl, level
        self.sep, self.sh = Joint(fl, pts, shared=False), Joint(fl, pts, shared=True)
        self.truth = self.sh.split(np.asarray(x_shared, float))     # per variant: log c..., log K, exponents
        rng = np.random.default_rng(seed)
        self.noise = [sigma * rng.standard_normal((draws, len(p))) for p in pts]
        self.centre = [np.mean(F.lx, axis=1) for F in self.sep.F]   # log geometric mean of each term's variable
        n, V, k = sum(len(p) for p in pts), len(pts), len(fl.exp_names)
        self.q, self.dof = k * (V - 1), n - V * len(fl.param_names)

    def rate(self, exp_name: str, delta: float, v: int = 1) -> float:
        """Rejection rate with variant v's exponent ``exp_name`` moved by ``delta``."""
        nc = self.sep.nc
        ths = [t.copy() for t in self.truth]
        e = self.fl.exp_names.index(exp_name)
        ths[v][nc + e] += delta
        for j, t in enumerate(self.fl.terms):   # keep the term at its geometric-mean point: a slope change
            if t.exp_name == exp_name:
                ths[v][self.fl.coef_index[j]] += delta * self.centre[v][j]
        clean = [self.sep.log_pred(i, th) for i, th in enumerate(ths)]
        D = len(self.noise[0])
        ys = [c + z for c, z in zip(clean, self.noise)]
        f1 = self.sep.fit_near(np.tile(self.sep.join(ths), (D, 1)), ys)
        f0 = self.sh.fit_near(np.tile(self.sh.join(self.truth), (D, 1)), ys)
        hits = sum(f_test(2 * max(a, b), 2 * b, self.q, self.dof)[1] < self.level for a, b in zip(f0, f1))
        return hits / D


def _search(rate: Any, start: float) -> dict[str, Any]:
    """The smallest delta with rate(delta) >= POWER (module docstring: double, halve, bisect)."""
    tried: dict[float, float] = {}

    def at(d: float) -> float:
        if d not in tried:
            tried[d] = rate(d)
        return tried[d]
    lo, hi = 0.0, start
    for _ in range(MAX_DOUBLINGS):
        if at(hi) >= POWER:
            break
        lo, hi = hi, 2 * hi
    if at(hi) < POWER:
        return {"value": float("inf"), "bracket": [hi, float("inf")], "power": at(hi),
                "tried": [[d, r] for d, r in sorted(tried.items())]}
    while lo == 0.0 and hi > start / 2 ** MAX_DOUBLINGS:   # the start already has the power: go down
        if at(hi / 2) < POWER:
            lo = hi / 2
            break
        hi = hi / 2
    for _ in range(BISECTIONS):
        if lo <= 0:
            break
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if at(mid) < POWER else (lo, mid)
    return {"value": hi, "bracket": [lo, hi], "power": at(hi), "tried": [[d, r] for d, r in sorted(tried.items())]}


def detectable_difference(fl: Law, pts: list[Points], names: list[str], x_shared: np.ndarray, sigma: float,
                          level: float, diffs: dict[str, Any], draws: int = DRAWS, seed: int = 0) -> dict[str, Any]:
    """``{power, level, draws, seed, noise_sd, variant, reference, method, exponents: {name: {value,
    bracket, power, tried}}}``: per exponent of the free law ``fl``, the smallest difference (variant
    ``names[1]`` minus the reference ``names[0]``) the F-test detects at 80% power on these points
    (module docstring). ``x_shared``: the shared fit's parameters (:class:`joint.Joint` layout);
    ``diffs``: the test's Wald differences (their se sets where the search starts)."""
    sim = _Simulator(fl, pts, x_shared, sigma, level, draws, seed)
    rows = diffs["variants"][names[1]]
    out: dict[str, Any] = {}
    for e in fl.exp_names:
        se = rows[e]["se"]
        start = START_SE * se if np.isfinite(se) and se > 0 else 0.1
        out[e] = _search(lambda d, e=e: sim.rate(e, d), float(start))
    return {"power": POWER, "level": level, "draws": draws, "seed": seed, "noise_sd": sigma,
            "variant": names[1], "reference": names[0],
            "method": (f"smallest exponent difference ({names[1]} - {names[0]}, one exponent at a time) the F-test "
                       f"rejects at level {level:g} in >= {100 * POWER:g}% of {draws} synthetic tables on these "
                       f"points, drawn from the shared-exponent fit with log-normal noise of sd {sigma:.3g} "
                       f"(the per-variant fit's residual sd)"),
            "exponents": out}
