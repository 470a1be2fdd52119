"""Pre-registered predictions: a report on a grid that is still running predicts the final loss of
every unfinished cell from the finished ones, keeps the predictions in the store with the fit that
made them, and scores them once the cells finish.

    <store>/predictions/<key>.json   one record per (finished cells, law, fit options): when it was
                                     made, the cells it was fitted on, the fit (its JSON, bootstrap
                                     draws included), and each unfinished cell's planned final point
                                     (m, l, N, tokens, tau_lr = sum of its schedule's lr) with the
                                     prediction and its interval

A record is written once (write-if-absent): reporting again with nothing newly finished adds nothing,
and a record is never rewritten, so what was predicted cannot change after the fact. The interval is
``run`` (the law's uncertainty plus one run's scatter): it is scored against one run's loss.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .store import Store, now

if TYPE_CHECKING:
    from scaling_grid.analysis import FitResult

PREFIX = "predictions/"
FINAL_ROLES = ("separate", "branch")   # the roles whose last point is a final loss (export's is_final)
NEVER = ("diverged",)                  # states that will not reach a final loss


def final_tau(config: Mapping[str, Any]) -> float:
    """tau = sum of lr over the run's schedule, as the trainer sums it (trainer.step.tau)."""
    from scaling_grid.trainer import from_dict
    cfg = from_dict(config)
    return _tau(json.dumps(cfg.to_dict()["optim"], sort_keys=True), cfg.steps)


@functools.lru_cache(maxsize=256)
def _tau(optim_json: str, steps: int) -> float:
    # cached: the cells of a grid share a few schedules, and each table is a compiled JAX function
    from scaling_grid.trainer import OptimConfig, lr_table, tau
    return float(tau(lr_table(OptimConfig(**json.loads(optim_json)), steps)[:steps])[-1])


def planned_finals(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The final point every unfinished cell will reach (one row per cell, the export's columns)."""
    rows = [r["config"] for r in records if r["config"].get("role") in FINAL_ROLES
            and r["status"].get("state") not in ("done", *NEVER)]
    taus = [final_tau(c["config"]) for c in rows]
    return {
        "variant": np.array([c["variant"] for c in rows], dtype=str),
        "cell": np.array([c["id"] for c in rows], dtype=str),
        "m": np.array([c["m"] for c in rows], float), "l": np.array([c["l"] for c in rows], float),
        "N": np.array([c["N"] for c in rows], float), "seed": np.array([c["seed"] for c in rows], float),
        "step": np.array([c["total_steps"] for c in rows], float),
        "tokens": np.array([c["total_steps"] * c["tokens_per_step"] for c in rows], float),
        "tau_lr": np.array(taus, float), "peak_lr": np.array([c["peak_lr"] for c in rows], float),
        "flops_per_token": np.array([c["flops_per_token"] for c in rows], float),
    }


def _key(result: FitResult, finished: Sequence[str]) -> str:
    """The same finished cells, law and options give the same key: one record per state of the grid."""
    o = {k: v for k, v in result.options.items() if k != "n_boot"}
    blob = json.dumps({"cells": sorted(finished), "formula": result.law.formula, "options": o}, sort_keys=True,
                      default=str)
    return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()


def preregister(url: str, result: FitResult, table: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Predict every unfinished cell of the store at ``url`` from ``result`` (a fit of its finished
    cells), keep the record in the store (unless one for the same state exists), and score every
    earlier record against the cells finished since. Returns what the report shows:
    {"pending": {columns} | None, "key", "written", "notes", "scored": [...]}."""
    from scaling_grid import analysis
    st = Store(url)
    records, _ = st.records()
    planned = planned_finals(records)
    notes: list[str] = []
    out: dict[str, Any] = {"pending": None, "key": None, "written": False, "notes": notes,
                           "ci": result.options["ci"]}
    finished = sorted({str(c) for c, f in zip(table.get("cell", []), table.get("is_final", [])) if f})
    fitted = set(result.variants)
    if len(planned["cell"]):
        keep = np.isin(planned["variant"], sorted(fitted))
        if not keep.all():
            notes.append(f"{int((~keep).sum())} unfinished cell(s) of variants the fit has no law for "
                         f"({', '.join(sorted(set(planned['variant'][~keep].tolist())))}) are not predicted")
        planned = {k: v[keep] for k, v in planned.items()}
    if len(planned["cell"]):
        pred, _, _ = analysis.predict_table(analysis.Predictor.from_result(result), planned, interval="run",
                                            points="all")
        out["pending"] = pred
        key = _key(result, finished)
        out["key"] = key
        record = {"format": "scaling-grid-predictions", "version": 1, "made": now(), "key": key,
                  "finished_cells": finished, "law": result.law.formula, "interval": "run",
                  "ci": result.options["ci"],
                  "predictions": [{"cell": str(pred["cell"][i]), "variant": str(pred["variant"][i]),
                                   **{k: float(pred[k][i]) for k in ("m", "l", "N", "tokens", "tau_lr",
                                                                      "prediction", "lo", "hi")}}
                                  for i in range(len(pred["cell"]))],
                  "fit": json.loads(result.to_json(indent=None))}
        try:
            out["written"] = st.write_if_absent(f"{PREFIX}{key}.json", json.dumps(record) + "\n")
        except Exception as e:  # a read-only store still gets its report; say why nothing was kept
            notes.append(f"the predictions could not be kept in the store ({type(e).__name__}: {e})")
    out["scored"] = score_records(_read_records(st, notes), table)
    return out


def _read_records(st: Store, notes: list[str]) -> list[dict[str, Any]]:
    import tensorstore as ts
    keys = st.kv.list(ts.KvStore.KeyRange(inclusive_min=PREFIX, exclusive_max=PREFIX[:-1] + "0")).result()
    recs = []
    for k in sorted(keys):
        try:
            rec = st.read_json(k.decode())
        except Exception as e:  # a damaged record is reported, not fatal: the others still count
            notes.append(f"{k.decode()}: unreadable ({e})")
            continue
        if rec and rec.get("format") == "scaling-grid-predictions":
            recs.append(rec)
    return sorted(recs, key=lambda r: r.get("made", ""))


def score_records(records: Sequence[Mapping[str, Any]], table: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each earlier record's predictions of cells that have finished since, against their final loss:
    [{"made", "key", "n_fitted", "n_predicted", "rows": [...], "summary"}], records with nothing
    finished yet included (rows empty) so the report says what is still open."""
    from scaling_grid.analysis.predict import score
    cell = np.asarray(table.get("cell", []), dtype=str)
    final = np.asarray(table.get("is_final", np.zeros(len(cell), bool)), bool)
    loss = np.asarray(table.get("eval_loss", np.full(len(cell), np.nan)), float)
    actual = {c: float(v) for c, v, f in zip(cell, loss, final) if f}
    out = []
    for rec in records:
        rows = [dict(p, actual=actual[p["cell"]]) for p in rec["predictions"] if p["cell"] in actual]
        for r in rows:
            r["rel_error"] = (r["actual"] - r["prediction"]) / r["actual"]
            r["inside"] = bool(r["lo"] <= r["actual"] <= r["hi"])
        summary = score(np.array([r["actual"] for r in rows]), np.array([r["prediction"] for r in rows]),
                        np.array([r["lo"] for r in rows]), np.array([r["hi"] for r in rows]), float(rec["ci"]))
        out.append({"made": rec.get("made"), "key": rec.get("key"), "law": rec.get("law"),
                    "n_fitted": len(rec.get("finished_cells", [])), "n_predicted": len(rec["predictions"]),
                    "interval": rec.get("interval"), "ci": rec["ci"], "rows": rows, "summary": summary})
    return out
