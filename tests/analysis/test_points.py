"""Point selection, exclusions, loading files, and the messages bad input must give."""
import numpy as np
import pytest

from scaling_grid.analysis import AnalysisError, laws, load_table, parse_mapping, run_fit
from scaling_grid.analysis import synthetic as S
from scaling_grid.analysis.selection import select_points

UNI = laws.get("universality")


def store_export():
    """Three runs logged every 10 steps: cosine (100 steps), constant (100), wsd (stable to step 80,
    cooldown to 100), warmup 20 steps; eval every 20 steps (NaN otherwise)."""
    cols = {k: [] for k in ("variant", "cell", "seed", "m", "l", "step", "tokens", "tau_lr", "lr",
                            "eval_loss", "schedule", "is_final")}
    for cell, sched, m, l in (("a", "cosine", 64, 2), ("b", "constant", 128, 4), ("c", "wsd", 256, 8)):
        tau = 0.0
        for step in range(10, 101, 10):
            if step <= 20:
                lr = 1e-3 * step / 20
            elif sched == "cosine":
                lr = 1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (step - 20) / 80)))
            elif sched == "wsd" and step > 80:
                lr = 1e-3 * (100 - step) / 20
            else:
                lr = 1e-3
            tau += 10 * lr
            for k, v in (("variant", "v"), ("cell", cell), ("seed", 0), ("m", m), ("l", l), ("step", step),
                         ("tokens", step * 1000), ("tau_lr", tau), ("lr", lr), ("schedule", sched),
                         ("eval_loss", 2 + 1 / step if step % 20 == 0 else np.nan),
                         ("is_final", step == 100)):
                cols[k].append(v)
    return {k: np.array(v) for k, v in cols.items()}


def test_default_selects_final_points_only_and_records_the_rest():
    pts = select_points(store_export(), UNI)
    assert sorted(pts.cell.tolist()) == ["a", "b", "c"] and np.all(pts.extra["step"] == 100)
    ex = {e["rule"]: e for e in pts.exclusions}
    assert ex["not a valid point"]["n_points"] == 27
    assert any("final points only" in n for n in pts.notes)


def test_constant_lr_points_exclude_warmup_cosine_and_cooldown():
    pts = select_points(store_export(), UNI, points="constant-lr")
    got = sorted(zip(pts.cell.tolist(), pts.extra["step"].astype(int).tolist()))
    # constant run: evaluated steps 20..100 at peak lr (the final one included); wsd: stable phase only
    assert got == [("b", 20), ("b", 40), ("b", 60), ("b", 80), ("b", 100), ("c", 20), ("c", 40), ("c", 60),
                   ("c", 80)]
    ex = {e["rule"]: e for e in pts.exclusions}
    assert ex["no evaluation"]["n_points"] > 0     # along-curve rows without an eval are recorded
    both = select_points(store_export(), UNI, points="final+constant-lr")
    assert len(both) == len(pts) + 2                # + final points of the cosine and wsd runs


def test_peak_lr_column_is_used_when_given():
    t = store_export()
    t["peak_lr"] = np.full(len(t["lr"]), 2e-3)      # nobody reached the peak: no constant-lr rows
    with pytest.raises(AnalysisError, match="too few points"):
        select_points(t, UNI, points="constant-lr")


def test_exclusions_are_applied_and_echoed():
    tab = S.universality_table(seed=0)
    pts = select_points(tab, UNI, min_tau=3, drop_highest=5, exclude_cells=[tab["cell"][0]])
    ex = {e["rule"]: e for e in pts.exclusions}
    assert ex["exclude_cells"]["n_points"] == 1 and ex["exclude_cells"]["cells"] == [tab["cell"][0]]
    assert ex["min_tau"]["n_points"] == 16 * 2 - 1   # tau 1 and 2 of every shape, minus the excluded cell
    assert ex["drop_highest"]["n_points"] == 5
    assert len(pts) == 80 - 1 - 31 - 5 and pts.V["tau"].min() >= 3
    kept_max = pts.loss.max()
    assert kept_max <= np.sort(tab["eval_loss"][tab["tau_lr"] >= 3])[-6]
    a, b = S.universality_table(seed=0), S.universality_table(seed=1, variant="qk")
    both = {k: np.concatenate([a[k], b[k]]) for k in a}
    p2 = select_points(both, UNI, exclude_variants=["qk"])
    assert set(p2.variant) == {"gpt2"} and {e["rule"] for e in p2.exclusions} == {"exclude_variants"}


def test_parse_mapping_and_load_csv_and_parquet(tmp_path):
    assert parse_mapping("N=model_size, D=tokens,loss=loss") == {"N": "model_size", "D": "tokens", "loss": "loss"}
    with pytest.raises(AnalysisError, match="expected name=column"):
        parse_mapping("N")
    with pytest.raises(AnalysisError, match="'size' is not a column"):
        parse_mapping("size=N")
    t = S.chinchilla_table(seed=0)
    p = tmp_path / "c.csv"
    p.write_text("model_size,n_tok,final_loss,note\n" + "".join(
        f"{float(a)!r},{float(b)!r},{float(c)!r},x\n" for a, b, c in zip(t["N"], t["D"], t["loss"])))
    tab = load_table(str(p), "N=model_size,D=n_tok,loss=final_loss")
    np.testing.assert_array_equal(tab["N"], t["N"])
    assert tab["note"].dtype.kind == "U"
    r = run_fit(tab, law="chinchilla", n_boot=0, checks=False)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"model_size": t["N"], "n_tok": t["D"], "final_loss": t["loss"]}), tmp_path / "c.parquet")
    tab2 = load_table(str(tmp_path / "c.parquet"), {"N": "model_size", "D": "n_tok", "loss": "final_loss"})
    r2 = run_fit(tab2, law="chinchilla", n_boot=0, checks=False)
    assert r.variants["all"].params == pytest.approx(r2.variants["all"].params)
    with pytest.raises(AnalysisError, match="no column 'nope'.*model_size"):
        load_table(str(p), "N=nope")
    with pytest.raises(AnalysisError, match="does not exist"):
        load_table(str(tmp_path / "missing.csv"))


# ------------------------------------------------------------------------------ bad input
def _one_width():
    return S.universality_table(widths=(128,))


@pytest.mark.parametrize("make, kwargs, pattern", [
    (_one_width, {}, r"c_m cannot be identified.*only 1 distinct widths.*m = 128.*indistinguishable from the constant L0"),
    (lambda: S.universality_table(depths=(4,)), {}, r"c_l cannot be identified.*only 1 distinct depths"),
    (lambda: S.universality_table(taus=(8,)), {}, r"c_tau cannot be identified.*only 1 distinct time values"),
    (lambda: S.universality_table(taus=(1, 8)), {"law": "universality-free"},
     r"c_tau cannot be identified.*exponent alpha_tau and c_tau cannot both be fitted.*at least 3"),
    (lambda: S.universality_table(widths=(64, 128), depths=(2, 4), taus=(1,)), {}, r"too few points.*4 point"),
    (lambda: {"m": np.array([64, 128, 256, 512.] * 3), "l": np.array([2, 4, 8, 16.] * 3),
              "tau_lr": np.repeat([1, 4, 16.], 4), "eval_loss": np.linspace(2, 3, 12)}, {},
     r"c_m and c_l cannot be separated"),
    (lambda: {"m": np.array([64, 128, 256, 512.] * 3), "l": np.array([2, 4, 8, 16.] * 3),
              "tau_lr": np.repeat([1, 4, 16.], 4), "eval_loss": np.linspace(2, 3, 12)},
     {"law": "universality-free"}, r"c_m and c_l cannot be separated.*vary together"),
    (lambda: {"N": np.geomspace(1e7, 1e9, 10), "D": 20 * np.geomspace(1e7, 1e9, 10),
              "loss": np.linspace(3, 2, 10)}, {"law": "chinchilla"}, r"A and B cannot be separated.*N, D vary together"),
    (lambda: dict(S.universality_table(), eval_loss=np.where(np.arange(80) == 3, np.nan, S.universality_table()["eval_loss"])),
     {}, r"NaN or infinite eval_loss at 1 selected point.*gpt2-m64-l2-tau8.*nan_policy='drop'"),
    (lambda: dict(S.universality_table(), eval_loss=np.where(np.arange(80) == 3, -1.0, S.universality_table()["eval_loss"])),
     {}, r"non-positive eval_loss at 1 point"),
    (lambda: {k: v for k, v in S.universality_table().items() if k != "l"}, {}, r"missing column.*needs 'l'"),
    (lambda: {k: v for k, v in S.universality_table().items() if k not in ("tau_lr",)}, {},
     r"missing column.*time variable tau \(time=tau_lr\).*'tau_lr' or 'tau'"),
    (lambda: {k: v for k, v in S.universality_table().items() if k != "eval_loss"}, {}, r"missing column: loss='eval'"),
    (lambda: S.universality_table(), {"law": "kaplan"}, r"unknown law 'kaplan'; registered"),
    (lambda: S.universality_table(), {"depth_offset": 2}, r"depth l - 2 \(column 'l'\) must be positive.*depth offset"),
    (lambda: dict(S.universality_table(), cell=np.full(80, "one")), {}, r"too few runs.*only 1"),
    (lambda: S.universality_table(), {"exclude_cells": ["nope"]}, r"exclude_cells: \['nope'\] are not cells"),
    (lambda: S.universality_table(), {"points": "some"}, r"points='some': allowed"),
])
def test_bad_input_gives_a_message_naming_the_problem(make, kwargs, pattern):
    with pytest.raises(AnalysisError, match=pattern):
        run_fit(make(), n_boot=10, checks=False, **kwargs)


def test_nan_policy_drop_records_the_dropped_point():
    tab = S.universality_table()
    tab["eval_loss"][3] = np.nan
    r = run_fit(tab, n_boot=0, checks=False, nan_policy="drop")
    assert {e["rule"]: e["n_points"] for e in r.exclusions}["NaN loss"] == 1
    assert r.variants["gpt2"].points.loss.size == 79


def test_depth_offset_changes_the_depth_variable():
    tab = S.universality_table(depths=(3, 4, 6, 10))
    tab["eval_loss"] = S.universality_loss(tab["m"], tab["l"] - 2, tab["tau_lr"], **S.UNIVERSALITY_TRUTH)
    r = run_fit(tab, depth_offset=2, n_boot=0, checks=False, huber_delta=None).variants["gpt2"]
    assert r.params["c_l"] == pytest.approx(S.UNIVERSALITY_TRUTH["c_l"], rel=1e-6)


def test_wsd_branches_are_resampled_with_their_trunk_and_object_columns_work():
    t = S.universality_table()
    t = {k: (v.astype(object) if v.dtype.kind == "U" else v) for k, v in t.items()}   # as a store export
    t["parent"] = np.array([c.rsplit("-tau", 1)[0] for c in t["cell"]], dtype=object)
    t["parent"][:5] = ""                 # separate runs have no parent
    pts = select_points(t, UNI)
    assert pts.n_runs == 15 + 5          # 15 trunks with their 5 branches each, and 5 separate runs
    assert any("counted with its parent trunk" in n for n in pts.notes)
