"""The sections of the report (:func:`report.write_report`), each written into a :class:`Doc`: the
summary, coefficients, comparison, preregistered predictions, the points, then one section per
variant (its parts below), the frontier and the provenance."""
from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .coefficients import coefficient_table
from .coefficients import rows as coefficient_rows
from .compare_text import comparison_table, universality_words
from .formatting import FLAG_TEXT, fmt, fmt_at, fmt_interval, interval_place, interval_text
from .laws import Law
from .plot_style import loss_units, slug
from .points import shape_text
from .report_doc import Doc
from .results import FitResult, VariantFit

DESCRIPTIONS = {
    "m_over_l_star": "optimal aspect ratio at fixed N: c_m/(2 c_ℓ) (general exponents: at N_ref)",
    "c_N": "shape term at the optimum: c_N N^(-1/3), c_N = 3 (3 c_m² c_ℓ)^(1/3)",
    "c_D": "time coefficient in tokens: c_D = c_τ k^(-α_τ), k = time per token",
    "D_over_N_star": "compute-optimal tokens per parameter (C = 6ND), at the largest compute of the data",
    "N_star_exponent": "N* ∝ C^a",
    "L_star_exponent": "L* − L0 ∝ C^(-b)",
    "shape_exponent": "(m/ℓ)* ∝ N^e (general exponents)",
    "shape_loss_exponent": "shape term at the optimum ∝ N^(-s)",
}
PLOT_TEXT = {
    "loss_vs_time": "Loss against the time variable per cell (panels: depth, colour: width) with the "
                    "fitted law's curve for each shape.",
    "collapse": "Loss minus every non-time term, against time, log-log. If the law holds, every shape "
                "falls on the black line of slope −α_τ (−1/3).",
    "width_depth": "Loss with the fitted time term removed, against width at each depth and against "
                   "depth at each width; lines are the fitted law.",
    "residuals": "Relative residuals (L − L̂)/L against time, depth and the fitted loss; the band is ±rms.",
    "eval_curves": "Every cell's whole eval-loss curve (one line per cell; panels: depth, colour: width); "
                   "dots are the runs' final points. The fit uses only the points named above.",
    "frontier": "Compute-optimal loss and model size (lines), with bootstrap bands, and the fitted runs "
                "(dots) in one FLOP convention: {convention}. Grey: the optimum is an extrapolation there "
                "(its N* or D* outside the runs' sizes or token budgets, or C beyond the largest run); the "
                "dotted line is the largest run's compute.",
}


def interval_cells(iv: dict[str, Any]) -> list[str]:
    """value, lo, hi at the precision the interval supports (formatting.fmt_interval)."""
    lo, hi = iv.get("lo"), iv.get("hi")
    q = interval_place(lo, hi) if lo is not None and hi is not None else None
    return [fmt_at(iv.get("value"), q), fmt_at(lo, q), fmt_at(hi, q)]


def summary(d: Doc, result: FitResult, title: str) -> None:
    """The title, and one paragraph: the law, the loss and its units, time, objective, intervals."""
    law, o = result.law, result.options
    units = loss_units(o["loss_column"])
    d.h(1, title)
    d.p(f"{law.display_name[0].upper()}{law.display_name[1:]}"
        + (f" (tied parameters: {', '.join(law.tied)})" if law.tied else "") + f". Loss: {o['loss_column']}, "
        + (f"in {units.replace('/', ' per ')} (mean cross-entropy, natural log)" if units else
           "in the file's own units (a scaling-grid export's losses are nats per token)")
        + f"; time variable: {o['time_column'] or 'none'} ({o['time'] or '-'}). Objective: "
        + result.objective.describe()
        + f"; intervals: {100 * o['ci']:g}% percentile bootstrap over whole runs, B = {o['n_boot']}, seed {o['seed']}"
        + "; the JSON's se is a robust scale (1.4826 × the draws' median absolute deviation)."
        + (f" Rows: only where {o['where']}." if o.get("where") else ""))


def coefficients(d: Doc, result: FitResult) -> None:
    """The answer first: the coefficient table as the CLI prints it, one row per quantity and one
    column per variant (blocks of variants on a narrow page), then its notes."""
    d.h(2, "Coefficients per variant")
    cols, rs = coefficient_rows(result)
    d.table(["quantity"] + [r["variant"] for r in rs],
            [["points (runs)"] + [f"{r['n_points']} ({r['n_runs']})" for r in rs]]
            + [[c[2]] + [interval_text(r[c[0]]) for r in rs] for c in cols])
    d.ul(ln[2:] for ln in coefficient_table(result, "markdown").splitlines() if ln.startswith("- "))


def comparison(d: Doc, result: FitResult) -> None:
    """The differences between variants and the universality test across them (two or more variants)."""
    if not (result.comparison or result.universality_across):
        return
    d.h(2, f"Comparing variants (reference: {result.comparison.get('reference', '-')})")
    if result.comparison:
        d.md_table(comparison_table(result.comparison, "markdown"))
    d.ul(universality_words(result.universality_across))


def preregistered(d: Doc, pre: Mapping[str, Any], made: Mapping[str, list[Path]], root: Path) -> None:
    """Predictions of the unfinished cells (kept in the store) and the scores of earlier ones: per
    record, then per cell of every record, then predicted against actual."""
    pend = pre.get("pending")
    if pend is not None and len(pend["cell"]):
        level = f"{100 * pre['ci']:g}%" if "ci" in pre else "95%"
        d.h(2, "Predicted final loss of the unfinished cells")
        d.p(f"From the fit above (the finished cells only); {level} interval of one run's loss (the law's "
            "uncertainty from the bootstrap draws plus the fit's residual scatter). "
            + (f"Kept in the store as predictions/{pre['key']}.json, to be scored when the cells finish."
               if pre.get("written") else f"The store already holds these predictions (predictions/{pre['key']}"
               ".json, made when the same cells had finished)." if pre.get("key") else ""))
        d.table(["cell", "variant", "m", "ℓ", "tokens", "τ", "prediction", "lo", "hi"],
                [[pend["cell"][i], pend["variant"][i], fmt(float(pend["m"][i])), fmt(float(pend["l"][i])),
                  fmt(float(pend["tokens"][i]), 3), fmt(float(pend["tau_lr"][i])),
                  *interval_cells({"value": float(pend["prediction"][i]), "lo": float(pend["lo"][i]),
                        "hi": float(pend["hi"][i])})] for i in range(len(pend["cell"]))])
    d.ul(pre.get("notes", []))
    scored = [r for r in pre.get("scored", []) if r["rows"]]
    if scored:
        d.h(2, "Earlier predictions, scored")
        d.p("Each record was made by an earlier report, from the cells finished then; its predictions of the "
            "cells that have finished since are compared with their final loss.")
        d.table(["record", "made", "law", "fitted on (cells)", "predicted", "finished since", "mean |rel err|",
                 "max |rel err|", "bias", "inside interval"],
                [[r["key"], r["made"], r["law"], r["n_fitted"], r["n_predicted"], r["summary"]["n"],
                  f"{100 * r['summary']['mean_abs_rel_error']:.3g}%", f"{100 * r['summary']['max_abs_rel_error']:.3g}%",
                  f"{100 * r['summary']['mean_rel_error']:+.3g}%",
                  f"{r['summary']['n_inside']} of {r['summary']['n']} ({100 * r['ci']:g}% {r['interval']} interval)"]
                 for r in scored])
        d.table(["record", "cell", "actual", "prediction [interval]", "rel error", "inside"],
                [[r["key"], x["cell"], fmt(x["actual"]), fmt_interval(x["prediction"], x["lo"], x["hi"]),
                  f"{100 * x['rel_error']:+.2f}%", "yes" if x["inside"] else "NO"]
                 for r in scored for x in r["rows"]], key=2)
        if "predicted_vs_actual" in made:
            d.img(made["predicted_vs_actual"], "Every record's predictions of the cells finished since, against "
                  "their final loss; bars: the predictions' intervals; dashed: prediction = actual.", root)


def points(d: Doc, result: FitResult) -> None:
    """Which points were fitted: the selection's notes, and every exclusion."""
    d.h(2, "Which points were fitted")
    d.ul(result.notes)
    if result.exclusions:
        d.table(["rule", "value", "points dropped", "cells (first)", "why"],
                [[e["rule"], e["value"], e["n_points"], ", ".join(map(str, e["cells"][:6])), e["detail"]]
                 for e in result.exclusions])
    else:
        d.p("No point was excluded.")


def eval_curves(d: Doc, made: Mapping[str, list[Path]], root: Path) -> None:
    """Every cell's whole eval curve, when the table has them."""
    curves = [k for k in made if k.startswith("eval_curves_")]
    if curves:
        d.h(2, "Eval curves of every cell")
        for key in curves:
            d.img(made[key], PLOT_TEXT["eval_curves"], root)


def variant_summary(d: Doc, v: str, vf: VariantFit, vd: dict[str, Any]) -> None:
    """A variant's heading, its points and fit error, bootstrap counts, convergence, warnings."""
    d.h(2, f"Variant {v}")
    d.p(f"{vd['n_points']} points from {vd['n_runs']} runs; fit error (rms of relative residuals) "
        f"{100 * vf.rms_rel_error:.3g}%, largest {100 * vd['fit']['max_abs_rel_error']:.3g}%; "
        f"bootstrap resamples used {vd['n_boot']} (discarded {vd['n_boot_discarded']}"
        + (f"; the optimiser did not converge on {vd['n_boot_not_converged']}" if vd["n_boot_not_converged"]
           else "") + ")"
        + ("" if vd["fit"].get("converged", True) else
           f". THE FIT DID NOT CONVERGE: the optimiser stopped with {vd['fit'].get('stop')!r}") + ".")
    if vd.get("warnings"):
        d.h(3, "Warnings")
        d.ul(vd["warnings"])


def lr_envelope(d: Doc, vd: dict[str, Any]) -> None:
    """--points best-lr: which lr won for each shape and budget."""
    if "lr_envelope" not in vd:
        return
    d.h(3, "Best learning rate per shape")
    d.p(vd["lr_envelope"]["selection"] + ". " + vd["lr_envelope"]["edge"] + ".")
    d.table(["shape, budget", "best lr", "loss", "lrs swept", "edge"],
            [[shape_text(sh), f"{sh['best_lr']:g}", f"{sh['loss']:.4g}",
              ", ".join(f"{x:g}" for x in sh["lrs"]), sh["edge"] or ""]
             for sh in vd["lr_envelope"]["shapes"]])


def parameters(d: Doc, vd: dict[str, Any]) -> None:
    """The law's parameters with their intervals and flags; the universality test where it applies."""
    rows = [[k, *interval_cells(iv), f"{FLAG_TEXT[iv['flag']][0]}: {iv['flag_meaning']}" if "flag" in iv else ""]
            for k, iv in {**vd["params"], **vd.get("exponents", {})}.items()]
    d.h(3, "Parameters")
    d.table(["parameter", "value", "lo", "hi", "flag"], rows)
    if "universality_test" in vd:
        ut = vd["universality_test"]
        d.p("Universality exponents (τ 1/3, m 1, ℓ 1) inside the intervals: "
            + ", ".join(f"{k}: {({True: 'yes', False: 'NO'}).get(x['inside_interval'], 'undetermined')}"
                        for k, x in ut.items() if isinstance(x, dict))
            + f"; verdict: {ut.get('verdict') or 'n/a'}.")


def derived_quantities(d: Doc, vd: dict[str, Any]) -> None:
    """What the law implies ((m/l)*, D*/N*, exponents of the frontier, ...) with intervals and meanings."""
    der = vd["derived"]
    rows = [[k, *interval_cells(iv), DESCRIPTIONS.get(k, "")] for k, iv in der.items()
            if isinstance(iv, dict) and "value" in iv]
    if not rows:
        return
    d.h(3, "Derived quantities")
    d.table(["quantity", "value", "lo", "hi", "meaning"], rows)
    extra = []
    if "tau_to_tokens" in der:
        extra.append("time → tokens: " + der["tau_to_tokens"]["statement"])
    if "shape_penalty" in der:
        sp = der["shape_penalty"]
        lo, hi = sp["band_5pct"]
        extra.append(f"off-optimal shape penalty {sp['formula']}: within 5% of the optimum for x in "
                     f"[{lo:.3g}, {hi:.3g}]" + (f"; the data span x in [{sp['data_x_range'][0]:.3g}, "
                                                f"{sp['data_x_range'][1]:.3g}] (largest penalty "
                                                f"{sp['data_max_penalty']:.3g}x)"
                                                if "data_x_range" in sp else ""))
    if "N_ref" in der:
        extra.append(f"N_ref = {der['N_ref']:.4g} (largest N of the data)")
    d.ul(extra)


def frontier_table(d: Doc, vd: dict[str, Any]) -> None:
    """The compute frontier at a few budgets, closed form and numerical, with extrapolation marked."""
    if "frontier" not in vd:
        return
    fr = vd["frontier"]
    q = fr["quantities"]
    keys = [k for k in ("N_star", "D_star", "L_star", "numerical_N_star", "numerical_D_star",
                        "numerical_L_star", "numerical_m_star", "numerical_l_star") if k in q]
    d.h(3, "Compute frontier")
    d.table(["C (FLOPs)", "C / largest run's C"] + keys,
            [[fmt(c, 3), f"x{fr['extrapolation_factor'][i]:.4g} "
              + ("extrapolated" if fr["extrapolated"][i] else "(measured)")]
             + [fmt_interval(q[k][i]["value"], q[k][i]["lo"], q[k][i]["hi"]) for k in keys]
             for i, c in enumerate(fr["C"])])
    d.ul([f"closed form assumes {fr['closed_form_assumes']}; the columns marked (real FLOPs) are the numerical "
          "optimum over width and depth with the real FLOPs per token"
          + (f": {fr['flops_model']}" if "flops_model" in fr else ""),
          f"compute of the runs: {fmt(fr['C_data_range'][0], 3)} to {fmt(fr['C_data_range'][1], 3)}; "
          "rows beyond it extrapolate the fitted law by the factor shown"
          if fr.get("C_data_range") else "compute of the runs unknown"])


def holdout_checks(d: Doc, vd: dict[str, Any]) -> None:
    """The automatic held-out checks (validation.py)."""
    if not vd["holdout"]:
        return
    d.h(3, "Held-out validation")
    d.table(["held out", "train points", "test points", "mean |rel err|", "max |rel err|"],
            [[h["name"], h["n_train"] if "n_train" in h else
              (f"({h['n_folds']} folds)" if "n_folds" in h else ""), h.get("n_test", ""),
              f"{100 * h['mean_abs_rel_error']:.3g}%" if "mean_abs_rel_error" in h else h.get("skipped", ""),
              f"{100 * h['max_abs_rel_error']:.3g}%" if "max_abs_rel_error" in h else ""]
             for h in vd["holdout"]])


def heldout_points(d: Doc, vd: dict[str, Any]) -> None:
    """--holdout: the points left out of the fit, predicted with intervals and scored."""
    if "holdout_predictions" not in vd:
        return
    h = vd["holdout_predictions"]
    sm = h["summary"]
    d.h(3, f"Held-out points ({h['condition']})")
    d.p(f"{sm['n']} points held out of the fit, predicted from the other {vd['n_points']}: mean |rel error| "
        f"{100 * sm['mean_abs_rel_error']:.3g}%, max {100 * sm['max_abs_rel_error']:.3g}%, bias "
        f"{100 * sm['mean_rel_error']:+.3g}%; {sm['n_inside']} of {sm['n']} inside the "
        f"{100 * h['ci']:g}% interval of the "
        + ("law's value (fit uncertainty only)." if h["interval"] == "law" else "law plus one run's scatter."))
    keys = [k for k in h["rows"][0] if k not in ("row", "cell", "actual", "prediction", "lo", "hi",
                                                 "rel_error", "inside")]
    d.table(["cell", *keys, "actual", "prediction", "lo", "hi", "rel error", "inside"],
            [[x["cell"], *(fmt(x[k]) for k in keys), fmt(x["actual"]), *interval_cells({"value": x["prediction"],
              "lo": x["lo"], "hi": x["hi"]}), f"{100 * x['rel_error']:+.2f}%", "yes" if x["inside"] else "NO"]
             for x in h["rows"]])


def scan_cell(v: float | None, full: dict[str, Any] | None) -> str:
    """A refit's value with the full fit's bootstrap interval placed around it (its width, not a new
    bootstrap: the scan refits once per rule), marked * when it leaves the full fit's interval."""
    if v is None or full is None or "lo" not in full or full.get("lo") is None:
        return fmt(v)
    lo, hi = v - (full["value"] - full["lo"]), v + (full["hi"] - full["value"])
    return fmt_interval(v, lo, hi) + ("" if full["lo"] <= v <= full["hi"] else " *")


def exclusion_scan(d: Doc, vd: dict[str, Any], law: Law, ci: float) -> None:
    """How the parameters move as the asymptotic trims (drop_highest, min_tau) change, each value with
    the full fit's interval around it."""
    if not vd["exclusion_scan"]:
        return
    d.h(3, "Exclusion scan")
    full = {**vd["params"], **{k: iv for k, iv in vd["derived"].items() if isinstance(iv, dict)}}
    keys = law.param_names + [k for k in ("m_over_l_star", "D_over_N_star") if k in full]
    d.p(f"Each rule refits the law once without the points it drops. Every value carries the {100 * ci:g}% "
        "bootstrap interval of the full fit (its width, placed around the refit's value: the scan is "
        "not bootstrapped again); * marks a value outside the full fit's interval.")
    rows = []
    for s in vd["exclusion_scan"]:
        rule = ", ".join(f"{k}={fmt(s[k])}" for k in ("drop_highest", "min_tau") if k in s)
        if "skipped" in s:
            rows.append([rule, s["n_points"], f"skipped: {s['skipped']}"] + [""] * (len(keys) - 1))
        else:
            rows.append([rule, s["n_points"]] + [scan_cell(s["params"].get(k, s.get(k)), full.get(k))
                                                 for k in keys])
    d.table(["rule", "points"] + keys, rows, key=2)


def variant_plots(d: Doc, v: str, made: Mapping[str, list[Path]], root: Path) -> None:
    """A variant's plots: loss against time, collapse, width and depth, residuals."""
    d.h(3, "Plots")
    for name in ("loss_vs_time", "collapse", "width_depth", "residuals"):
        key = f"{name}_{slug(v)}"
        if key in made:
            d.img(made[key], PLOT_TEXT[name], root)
        elif name == "collapse" and f"loss_vs_time_{slug(v)}" in made:
            d.none("No collapse plot: no point lies above the law's non-time terms (L minus them is ≤ 0 "
                   "everywhere), so there is nothing to draw on log axes.")


def variant(d: Doc, v: str, vf: VariantFit, law: Law, made: Mapping[str, list[Path]], root: Path) -> None:
    """One variant's section: every part above, in order."""
    vd = vf.to_dict()
    variant_summary(d, v, vf, vd)
    lr_envelope(d, vd)
    parameters(d, vd)
    derived_quantities(d, vd)
    frontier_table(d, vd)
    holdout_checks(d, vd)
    heldout_points(d, vd)
    exclusion_scan(d, vd, law, vf.ci)
    variant_plots(d, v, made, root)


def frontier_plot(d: Doc, made: Mapping[str, list[Path]], root: Path, result: FitResult) -> None:
    """The compute frontier of every variant, in one plot; a sentence saying why when there is none."""
    from .plot_frontier import convention, why_no_frontier
    d.h(2, "Compute frontier")
    if "frontier" in made:
        d.img(made["frontier"], PLOT_TEXT["frontier"].format(convention=convention(result.variants)[1]), root)
    else:
        d.none(why_no_frontier(result.variants))


def report_warnings(d: Doc, caught: list[str]) -> None:
    """What matplotlib or numpy warned about while the report was written: here, not on the terminal."""
    if caught:
        d.h(2, "Warnings while writing the report")
        d.ul(caught)


def provenance(d: Doc, prov: Mapping[str, str]) -> None:
    """Where the table came from and how the report was made, then the files beside the page."""
    d.h(2, "Provenance")
    d.md.append("\n".join(f"- {k}: `{v}`" for k, v in prov.items()) + "\n")
    d.html.append('<dl class="prov">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                                for k, v in prov.items()) + "</dl>")
    d.p("Files beside this page: fit.json (every coefficient, exponent and derived quantity with its "
        "interval at full precision, and the exclusions), provenance.json, coefficients.md / .csv / .tex, "
        "plots/*.png and *.pdf.")
