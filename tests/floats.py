"""Comparing two runs that compute the same thing in another float order (a vmapped pack against the
run alone, two processes against one, one mesh against another), from measured spreads.

Measured with `python benchmarks/float_spread.py --trials 20` (the packed grid test's shape: gpt2 w16
d1, 224 steps, warmup 22) and `... --width 32 --depth 2 --steps 40` (test_pack's `runs` fixture), four
runs a trial, a pack of 4 against each run alone; the same numbers came back bit for bit with two busy
processes beside it (`--load 2`): XLA's CPU results do not depend on load, and one computation run
twice is identical. Largest relative gap over 20 trials x 4 runs:

    steps compared      loss       grad_norm
    first 16            2.2e-7     2.2e-6
    first 32            1.0e-6     4.9e-4
    first 64            7.9e-6     4.5e-3
    all 224             2.8e-3     6.1e-2      (the tiny model is chaotic: gaps grow ~10x per 10 steps)

What a real bug moves (smallest over the 20 trials): one update lost at step 20 (lr 0 there) moves
the loss after it by >= 1.0e-2 relative and the gradient norm by >= 2.7e-2; a lost update halfway, or
one step trained on the next step's batch, by >= 9.6e-4 (loss) and >= 3.9e-3 (grad_norm). After
about 60 steps reordering noise is as large as a bug, so no tolerance can tell them apart there:
  - the first EARLY steps are compared tightly, 10x above the measured gap and >= 100x below a bug;
  - later steps only as the same curve (LATE_LOSS, 7x the largest gap: catches another lr or data);
  - tokens, tau and lr come from the lr table on the host: exact everywhere;
  - exactness of resume over the whole curve is tested against the same computation uninterrupted,
    which is bit-identical (test_pack.test_a_preempted_pack_resumes_to_the_same_curves).
"""
import numpy as np

EXACT = ("tokens", "tau", "lr")
EARLY = {"loss": (32, 1e-5), "eval_loss": (32, 1e-5), "eval_stderr": (32, 1e-4), "grad_norm": (16, 3e-5)}
LATE_LOSS = 2e-2


def assert_reordered_curves_close(a: dict, b: dict, what: str) -> None:
    """Curves of one run computed two ways (metric -> array indexed by step, NaN where not logged)."""
    for f in a:
        x, y = np.asarray(a[f], np.float64), np.asarray(b[f], np.float64)
        np.testing.assert_array_equal(np.isfinite(x), np.isfinite(y), err_msg=f"{what} {f}: logged steps")
        if f in EXACT:
            np.testing.assert_array_equal(x, y, err_msg=f"{what} {f}")
            continue
        upto, rtol = EARLY[f]
        np.testing.assert_allclose(x[:upto + 1], y[:upto + 1], rtol=rtol, atol=0, equal_nan=True,
                                   err_msg=f"{what} {f}: steps 0-{upto}")
        if f in ("loss", "eval_loss"):
            np.testing.assert_allclose(x, y, rtol=LATE_LOSS, equal_nan=True, err_msg=f"{what} {f}: the same curve")


def assert_same_curves(a: dict, b: dict, what: str) -> None:
    """Curves of one computation run twice (resumed or not): bit for bit."""
    for f in a:
        np.testing.assert_array_equal(np.asarray(a[f]), np.asarray(b[f]), err_msg=f"{what} {f}")
