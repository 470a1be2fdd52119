"""Synthetic tables drawn from known coefficients, for tests, benchmarks and demos.

``universality_table`` looks like a store export (final points of separate runs, one cell per
(width, depth, budget)); ``chinchilla_table`` like a published (N, D, loss) file.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

# S.write_csv(table, path): the one CSV writer, here too because tests write synthetic tables with it
from .csvfile import write_csv as write_csv

# Realistic for byte-level small models: L ~ 1.0-2.0 nats/byte on the default grid.
UNIVERSALITY_TRUTH = {"c_tau": 0.6, "c_m": 20.0, "c_l": 0.4, "L0": 0.8}
CHINCHILLA_TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def universality_loss(m: ArrayLike, l: ArrayLike, tau: ArrayLike, c_tau: float, c_m: float, c_l: float, L0: float,
                      a_tau: float = 1 / 3, a_m: float = 1.0, a_l: float = 1.0) -> np.ndarray:
    return L0 + c_tau * np.asarray(tau, float) ** -a_tau + c_m * np.asarray(m, float) ** -a_m \
        + c_l * np.asarray(l, float) ** -a_l


def universality_table(seed: int = 0, widths: Sequence[float] = (64, 128, 256, 512),
                       depths: Sequence[float] = (2, 4, 8, 16), taus: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0),
                       noise: float = 0.005, truth: dict[str, float] | None = None,
                       exponents: Sequence[float] = (1 / 3, 1.0, 1.0), variant: str = "gpt2", peak_lr: float = 3e-3,
                       tokens_per_step: int = 4096, f_bar: float = 0.6, vocab: int = 256,
                       seq_len: int = 256) -> dict[str, np.ndarray]:
    """Final points of separate runs, one per (width, depth, tau), with multiplicative log-normal
    noise. tau_lr = peak_lr * f_bar * steps, tokens = tokens_per_step * steps; flops_per_token is
    72 m^2 l (6N) + 12 l T m (attention) + 6 V m (head)."""
    truth = dict(UNIVERSALITY_TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    m, l, t = (a.ravel() for a in np.meshgrid(np.asarray(widths, float), np.asarray(depths, float),
                                              np.asarray(taus, float), indexing="ij"))
    L = universality_loss(m, l, t, **truth, a_tau=exponents[0], a_m=exponents[1], a_l=exponents[2])
    L = L * np.exp(noise * rng.standard_normal(len(L)))
    steps = t / (peak_lr * f_bar)
    n = len(L)
    return {
        "variant": np.full(n, variant),
        "cell": np.array([f"{variant}-m{int(a)}-l{int(b)}-tau{c:g}" for a, b, c in zip(m, l, t)]),
        "m": m, "l": l, "N": 12 * m * m * l, "seed": np.zeros(n), "step": steps,
        "tokens": steps * tokens_per_step, "tau_lr": t, "lr": np.full(n, 0.1 * peak_lr),
        "peak_lr": np.full(n, peak_lr), "train_loss": L * 0.98, "eval_loss": L,
        "eval_stderr": np.full(n, 0.002), "schedule": np.full(n, "cosine"), "is_final": np.ones(n, bool),
        "flops_per_token": 72 * m * m * l + 12 * l * seq_len * m + 6 * vocab * m, "total_steps": steps,
    }


def chinchilla_table(seed: int = 0, Ns: ArrayLike | None = None, Ds: ArrayLike | None = None, noise: float = 0.003,
                     truth: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """(N, D, loss) on a grid of model sizes and token counts, one row per run (column ``run``)."""
    truth = dict(CHINCHILLA_TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    Ns = np.geomspace(1e7, 1e9, 8) if Ns is None else np.asarray(Ns, float)
    Ds = np.geomspace(1e8, 1e10, 8) if Ds is None else np.asarray(Ds, float)
    N, D = (a.ravel() for a in np.meshgrid(Ns, Ds, indexing="ij"))
    L = truth["E"] + truth["A"] / N ** truth["alpha"] + truth["B"] / D ** truth["beta"]
    L = L * np.exp(noise * rng.standard_normal(len(L)))
    return {"N": N, "D": D, "loss": L, "run": np.arange(len(L)).astype(str)}


def overtraining_table(seed: int = 0, noise: float = 0.005, truth: dict[str, float] | None = None
                       ) -> dict[str, np.ndarray]:
    """A published-style over-training study: 4 small models (20M-410M parameters) each trained on
    24 budgets from 5 to 640 tokens per parameter, plus a 1.4B and a 6.9B model at 20 and 80 tokens
    per parameter; Chinchilla's law with its published coefficients and 0.5% multiplicative noise.
    Columns as such a file names them: ``params``, ``tokens``, ``val_loss``, ``tokens_per_param``, ``run``."""
    truth = dict(CHINCHILLA_TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    small = np.repeat([20e6, 50e6, 110e6, 410e6], 24)
    M = np.concatenate([np.tile(np.geomspace(5, 640, 24), 4), [20.0, 80.0, 20.0, 80.0]])
    N = np.concatenate([small, [1.4e9, 1.4e9, 6.9e9, 6.9e9]])
    D = np.round(M * N, -6)
    L = truth["E"] + truth["A"] / N ** truth["alpha"] + truth["B"] / D ** truth["beta"]
    L = L * np.exp(noise * rng.standard_normal(len(L)))
    return {"params": N, "tokens": D, "val_loss": np.round(L, 5), "tokens_per_param": np.round(D / N, 2),
            "run": np.array([f"r{i:03d}" for i in range(len(L))])}


def two_variant_table(seed: int = 0, names: Sequence[str] = ("A", "B"),
                      truths: Sequence[dict[str, float] | None] = (None, None),
                      exponents: Sequence[Sequence[float]] = ((1 / 3, 1.0, 1.0), (1 / 3, 1.0, 1.0)),
                      noise: float = 0.005, **grid: object) -> dict[str, np.ndarray]:
    """Two (or more) variants stacked, each a :func:`universality_table` with its own coefficients
    and exponents and independent noise; ``grid`` (widths, depths, taus, ...) is shared."""
    rng = np.random.default_rng(seed)
    parts = [universality_table(int(rng.integers(2 ** 31)), truth=t, exponents=e, noise=noise, variant=n,
                                **grid)  # type: ignore[arg-type]
             for n, t, e in zip(names, truths, exponents)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def lr_sweep_table(seed: int = 0, widths: Sequence[float] = (64, 128, 256), depths: Sequence[float] = (2, 4, 8),
                   steps: Sequence[float] = (500, 1000, 2000, 4000, 8000),
                   lrs: Sequence[float] = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2), lr_opt: float = 4e-3,
                   curvature: float = 0.1, noise: float = 0.005, truth: dict[str, float] | None = None,
                   variant: str = "gpt2", f_bar: float = 0.6, tokens_per_step: int = 4096) -> dict[str, np.ndarray]:
    """Final points of separate runs over width x depth x budget (steps) x a swept peak lr. The loss is
    the universality law at the run's tau = lr f_bar steps, times a bowl in log lr,
    ``1 + curvature log2(lr / lr*)^2``, whose optimum lr* = lr_opt 128 / m moves with width (as under
    standard parametrization), then log-normal noise. The lr column is the peak lr (a file's lr)."""
    truth = dict(UNIVERSALITY_TRUTH if truth is None else truth)
    rng = np.random.default_rng(seed)
    m, l, s, lr = (a.ravel() for a in np.meshgrid(np.asarray(widths, float), np.asarray(depths, float),
                                                  np.asarray(steps, float), np.asarray(lrs, float), indexing="ij"))
    tau = lr * f_bar * s
    best = lr_opt * 128.0 / m
    L = universality_loss(m, l, tau, **truth) * (1 + curvature * np.log2(lr / best) ** 2)
    L = L * np.exp(noise * rng.standard_normal(len(L)))
    n = len(L)
    return {"variant": np.full(n, variant),
            "cell": np.array([f"{variant}-m{int(a)}-l{int(b)}-s{int(c)}-lr{d:g}" for a, b, c, d in zip(m, l, s, lr)]),
            "m": m, "l": l, "N": 12 * m * m * l, "seed": np.zeros(n), "step": s, "tokens": s * tokens_per_step,
            "tau_lr": tau, "lr": lr, "peak_lr": lr, "eval_loss": L, "schedule": np.full(n, "cosine"),
            "is_final": np.ones(n, bool), "lr_opt": best}
