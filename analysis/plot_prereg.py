"""The pre-registration plot: every earlier record's predictions of cells that have finished since
(grid/prereg.py's scored records) against their actual final loss, with the predictions' intervals."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .plot_style import MARKERS, save  # noqa: E402


def plot_predicted_vs_actual(scored: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """One point per (record, cell): x the actual final loss, y the prediction with its interval as
    an error bar; the diagonal is a perfect prediction. [] when no prediction has been scored yet."""
    records = [r for r in scored if r["rows"]]
    if not records:
        return []
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    everything = []
    for i, r in enumerate(records):
        x = np.array([p["actual"] for p in r["rows"]])
        y = np.array([p["prediction"] for p in r["rows"]])
        err = np.array([[p["prediction"] - p["lo"] for p in r["rows"]], [p["hi"] - p["prediction"] for p in r["rows"]]])
        ax.errorbar(x, y, yerr=np.maximum(err, 0), fmt=MARKERS[i % len(MARKERS)], ms=4, lw=0.9, capsize=2,
                    color=f"C{i % 10}", label=f"{r['key']} (made {str(r['made'])[:16]}; {len(x)} cells)")
        everything += [x, y - err[0], y + err[1]]
    lo, hi = float(np.min(np.concatenate(everything))), float(np.max(np.concatenate(everything)))
    pad = 0.03 * (hi - lo or 1)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.9, label="prediction = actual")
    ax.set_xlabel("actual final loss")
    ax.set_ylabel(f"predicted final loss ({100 * records[0]['ci']:g}% interval)")
    ax.set_title("pre-registered predictions against the finished cells")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return save(fig, out_dir, "predicted_vs_actual")
