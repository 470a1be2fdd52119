"""The bootstrap's resampling: whole runs are drawn with replacement (a run's points move together),
as point weights per draw (:func:`run_counts`); for best-lr points the choice of lr is a step of each
draw (:func:`envelope_counts`). The refits on these weights are :func:`nonlinear.bootstrap`."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .laws import Law
from .points import Points
from .seeds import seed_noise


class Draws(NamedTuple):
    """Bootstrap parameter draws (B_valid, P); resamples discarded (unidentified); kept resamples
    whose optimiser did not converge."""
    samples: np.ndarray
    n_discarded: int
    n_not_converged: int


def run_counts(pts: Points, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights per point (B, n): whole runs drawn with replacement."""
    runs, inv = np.unique(pts.run, return_inverse=True)
    R = len(runs)
    counts = rng.multinomial(R, np.full(R, 1.0 / R), size=n_boot)
    return counts[:, inv]


def envelope_counts(law: Law, pts: Points, theta: np.ndarray, n_boot: int, rng: np.random.Generator,
                    select_in_draw: bool = True) -> tuple[Points, np.ndarray]:
    """best-lr: bootstrap weights (B, n_candidates) over every candidate run of ``pts.envelope``, with
    the lr selection redone inside each draw. Returns (the candidates' points, weights).

    One draw: (1) resample units with replacement -- a unit is a shape's lr family at one budget, or
    several when a run spans them (a wsd trunk), so lr siblings travel together as runs do in
    :func:`run_counts`; (2) in every drawn copy of a family, pick the lr with the lowest loss after
    each sibling's log loss is shifted by a relative residual of the envelope fit drawn with
    replacement; (3) the picked run enters the fit with its observed loss (weight +1 per copy).

    Why the shift: a run's final loss is one noisy number, so resampling families alone would pick
    the same winner in every draw and the selection would look free. The residuals of the envelope
    fit are the noise model the run bootstrap already relies on (the scatter of one run about the
    law; it includes misfit, so it errs wide). The shift is used only to choose: the fit sees the
    observed loss, so the loss noise, already carried by resampling runs, is not counted twice.
    Siblings are shifted independently (separate trainings). Where the candidates hold seed
    replicates (:func:`seeds.seed_noise`), the shift is drawn from a normal of their pooled sd
    instead: the noise alone, without the misfit. ``select_in_draw=False`` keeps the
    full-data winners in every draw (selection once, outside): the same resampled units, for
    comparison."""
    env = pts.envelope
    assert env is not None
    cand = env.candidates
    _, fam = np.unique(env.family, return_inverse=True)
    _, unit = np.unique(env.units(), return_inverse=True)
    F, U, n = int(fam.max() + 1), int(unit.max() + 1), len(cand)
    size = np.bincount(fam, minlength=F)
    members = np.full((F, int(size.max())), -1)
    logL = np.full(members.shape, np.inf)         # padding never wins
    order = np.argsort(fam, kind="stable")
    slot = np.arange(n) - np.concatenate([[0], np.cumsum(size)[:-1]])[fam[order]]
    members[fam[order], slot] = order
    logL[fam[order], slot] = np.log(cand.loss[order])
    if not select_in_draw:                         # the full-data winners, in every draw
        logL = np.where(np.isfinite(logL), np.inf, logL)
        win = env.winners()
        logL[fam[win], slot[np.argsort(order)][win]] = 0.0
    unit_of = np.zeros(F, int)
    unit_of[fam] = unit
    r = np.log(pts.loss) - np.log(law.predict(theta, pts.V))
    r = r - np.mean(r)
    reps = seed_noise(cand)   # seed replicates measure the noise alone: draw the shift from it instead
    copies = rng.multinomial(U, np.full(U, 1.0 / U), size=n_boot)[:, unit_of]   # (B, F) copies of each family
    W = np.zeros((n_boot, n))
    rows = np.arange(n_boot)[:, None]
    for k in range(1, int(copies.max(initial=0)) + 1):   # the k-th copy of every family drawn k times or more
        shift: float | np.ndarray = 0.0
        if select_in_draw and reps is not None:
            shift = rng.normal(0.0, reps["sd"], size=(n_boot,) + logL.shape)
        elif select_in_draw and len(r) > 1:
            shift = rng.choice(r, size=(n_boot,) + logL.shape)
        pick = np.broadcast_to(members[np.arange(F), np.argmin(logL[None] + shift, axis=2)], copies.shape)
        np.add.at(W, (np.broadcast_to(rows, pick.shape), pick), copies >= k)   # pick: (B, F) candidate index
    return cand, W
