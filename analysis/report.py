"""A report directory: ``index.html``, one self-contained file (plots inline as PNG data URIs, CSS
inline, nothing fetched) that can be mailed or attached; beside it ``index.md``, the coefficient
tables (md/csv/tex), the fit as JSON, the provenance as JSON, and every plot as PNG and PDF.

    write_report(table, out_dir, provenance=None, **fit_options) -> Path of index.html
"""
from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import plots as P
from .errors import AnalysisError
from .fit import FitResult, run_fit
from .tables import FLAG_TEXT, coefficient_table, fmt, fmt_at, fmt_interval, interval_place, write_tables

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
    "frontier": "Compute-optimal loss and model size: closed form with C = 6ND (dashed) and numerical "
                "with the grid's real FLOPs per token (solid); bands are bootstrap intervals; dots "
                "are the runs; the grey region, beyond the largest run's compute, is extrapolation.",
}


class _Doc:
    """Builds the same report as Markdown and HTML."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str) -> None:
        self.md.append("#" * level + " " + text + "\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def ul(self, items: Iterable[object]) -> None:
        items = list(items)
        if not items:
            return
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "</ul>")

    def table(self, head: Sequence[object], rows: Sequence[Sequence[object]], md: bool = True) -> None:
        if not rows:
            return
        def esc(s: object) -> str:
            return str(s).replace("|", "\\|")
        if md:
            self.md.append("\n".join(["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                                     + ["| " + " | ".join(map(esc, r)) + " |" for r in rows]) + "\n")
        # a wide table scrolls inside its own box instead of widening (and cutting off) the page
        self.html.append('<div class="scroll"><table><thead><tr>'
                         + "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
                         + "</tr></thead><tbody>" + "".join(
                             "<tr>" + "".join(self._td(c) for c in r) + "</tr>" for r in rows)
                         + "</tbody></table></div>")

    @staticmethod
    def _td(cell: object) -> str:
        # numbers and intervals never break inside; long prose (a meaning, a list of cells) wraps
        text = str(cell)
        return f'<td class="t">{html.escape(text)}</td>' if len(text) > 40 else f"<td>{html.escape(text)}</td>"

    def img(self, files: Sequence[Path], caption: str, root: Path) -> None:
        png, pdf = files  # plots.plot_all: [png, pdf]
        a, b = png.relative_to(root).as_posix(), pdf.relative_to(root).as_posix()
        self.md.append(f"![{caption}]({a})\n\n*{caption}* ([PDF]({b}))\n")
        # inline, so the HTML file alone carries every plot; the PDF is named, not linked, since a
        # mailed copy has no folder beside it
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f'<figcaption>{html.escape(caption)} (PDF in the report folder: '
                         f'<code>{html.escape(b)}</code>)</figcaption></figure>')

    def md_table(self, text: str) -> None:
        """A Markdown table with its "- " notes below it (as tables.py writes them), in both documents."""
        self.md.append(text)
        lines = [ln for ln in text.splitlines() if ln.startswith("|")]
        self.table([c.strip() for c in lines[0].strip("|").split("|")],
                   [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]], md=False)
        self.html.append("<ul>" + "".join(f"<li>{html.escape(ln[2:])}</li>" for ln in text.splitlines()
                                          if ln.startswith("- ")) + "</ul>")


CSS = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:1.5em auto;padding:0 1em;color:#222;
line-height:1.4;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%;margin:0.8em 0}
table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;
vertical-align:top;overflow-wrap:normal}td{white-space:nowrap}td.t{white-space:normal;min-width:16em}
th{background:#f3f3f3}img{max-width:100%;height:auto;border:1px solid #eee}figure{margin:1em 0}
figcaption{font-size:0.9em;color:#555}code{background:#f5f5f5}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:2px 1em}dl.prov dt{font-weight:600}
dl.prov dd{margin:0;font-family:ui-monospace,monospace;font-size:0.9em}"""


def _version(package: str) -> str:
    """A package's installed version, read from its metadata (no import: JAX is slow to import)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Where and how the report was made: versions, date (UTC), hardware, command line."""
    argv = [Path(sys.argv[0]).name] + sys.argv[1:] if sys.argv and sys.argv[0] else sys.argv
    return {
        "scaling-grid version": _version("scaling-grid"),
        "JAX version": _version("jax"),
        "numpy / scipy / matplotlib": " / ".join(_version(p) for p in ("numpy", "scipy", "matplotlib")),
        "Python": platform.python_version(),
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "command": shlex.join(argv),
    }


def _iv(iv: dict[str, Any]) -> list[str]:
    """value, lo, hi at the precision the interval supports (tables.fmt_interval)."""
    lo, hi = iv.get("lo"), iv.get("hi")
    q = interval_place(lo, hi) if lo is not None and hi is not None else None
    return [fmt_at(iv.get("value"), q), fmt_at(lo, q), fmt_at(hi, q)]


def check_output(path: str | Path, what: str, folder: bool = False) -> None:
    """Raise AnalysisError, naming ``what`` (e.g. "--json"), if ``path`` cannot be written: checked
    before a fit, so a bad path costs nothing and writes nothing. A file needs an existing writable
    folder; a folder (created with its parents) needs its nearest existing ancestor to be one."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise AnalysisError(f"{what} {str(p)!r}: is a file, not a folder")
    if not folder and p.is_dir():
        raise AnalysisError(f"{what} {str(p)!r}: is a folder; give a file name")
    parent = p.parent if not folder or not p.exists() else p
    while folder and not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        raise AnalysisError(f"{what} {str(p)!r}: the folder {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise AnalysisError(f"{what} {str(p)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AnalysisError(f"{what} {str(p)!r}: the folder {str(parent)!r} is not writable")
    if not folder and p.exists() and not os.access(p, os.W_OK):
        raise AnalysisError(f"{what} {str(p)!r}: the file exists and is not writable")


def _preregistered(d: _Doc, pre: Mapping[str, Any]) -> None:
    """Predictions of the unfinished cells (kept in the store) and the scores of earlier ones."""
    pend = pre.get("pending")
    if pend is not None and len(pend["cell"]):
        level = f"{100 * pre['ci']:g}%" if "ci" in pre else "95%"
        d.h(2, "Predicted final loss of the unfinished cells")
        d.p(f"From the fit above (the finished cells only); {level} interval of one run's loss (the law's "
            "uncertainty from the bootstrap draws plus the fit's residual scatter). "
            + (f"Kept in the store as predictions/{pre['key']}.json, to be scored when the cells finish."
               if pre.get("written") else f"The store already holds these predictions (predictions/{pre['key']}"
               ".json, made when the same cells had finished)." if pre.get("key") else ""))
        d.table(["cell", "variant", "m", "l", "tokens", "τ", "prediction", "lo", "hi"],
                [[pend["cell"][i], pend["variant"][i], fmt(float(pend["m"][i])), fmt(float(pend["l"][i])),
                  fmt(float(pend["tokens"][i]), 3), fmt(float(pend["tau_lr"][i])),
                  *_iv({"value": float(pend["prediction"][i]), "lo": float(pend["lo"][i]),
                        "hi": float(pend["hi"][i])})] for i in range(len(pend["cell"]))])
    d.ul(pre.get("notes", []))
    scored = [r for r in pre.get("scored", []) if r["rows"]]
    if scored:
        d.h(2, "Earlier predictions, scored")
        d.p("Each record was made by an earlier report, from the cells finished then; its predictions of the "
            "cells that have finished since are compared with their final loss.")
        d.table(["made", "record", "law", "fitted on (cells)", "predicted", "finished since", "mean |rel err|",
                 "max |rel err|", "bias", "inside interval"],
                [[r["made"], r["key"], r["law"], r["n_fitted"], r["n_predicted"], r["summary"]["n"],
                  f"{100 * r['summary']['mean_abs_rel_error']:.3g}%", f"{100 * r['summary']['max_abs_rel_error']:.3g}%",
                  f"{100 * r['summary']['mean_rel_error']:+.3g}%",
                  f"{r['summary']['n_inside']} of {r['summary']['n']} ({100 * r['ci']:g}% {r['interval']} interval)"]
                 for r in scored])
        last = scored[-1]
        d.table(["cell (latest record)", "actual", "prediction", "lo", "hi", "rel error", "inside"],
                [[x["cell"], fmt(x["actual"]), *_iv({"value": x["prediction"], "lo": x["lo"], "hi": x["hi"]}),
                  f"{100 * x['rel_error']:+.2f}%", "yes" if x["inside"] else "NO"] for x in last["rows"]])


def write_report(table: Mapping[str, Iterable[Any]], out_dir: str | Path, *, result: FitResult | None = None,
                 title: str = "scaling-grid fit report", provenance: Mapping[str, object] | None = None,
                 preregistered: Mapping[str, Any] | None = None, **fit_options: Any) -> Path:
    """Fit (unless ``result`` is given; ``fit_options`` go to :func:`run_fit`) and write the report
    directory. ``provenance`` ({label: text}, e.g. source, spec name, spec hash: the table itself
    does not know them) is listed first in the provenance section, before :func:`environment`.
    ``preregistered`` (grid/prereg.py, a store still running): the predictions of its unfinished
    cells and the scores of earlier ones, shown after the coefficients.
    Returns the path of ``index.html`` (``index.md`` lies beside it)."""
    if result is None:
        result = run_fit(table, **fit_options)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "fit.json").write_text(result.to_json())
    prov = {**{str(k): str(v) for k, v in (provenance or {}).items()}, **environment()}
    (root / "provenance.json").write_text(json.dumps(prov, indent=1, ensure_ascii=False) + "\n")
    write_tables(result, root)
    made = P.plot_all(result, root / "plots")
    if result.options.get("where"):  # the curves of the rows the fit used, not of the rows --where removed
        from .columns import check_table
        from .expr import evaluate
        T = check_table(table)
        keep = evaluate(result.options["where"], T)
        table = {k: v[keep] for k, v in T.items()}
    made.update(P.plot_eval_curves(table, root / "plots", time=result.options.get("time_column")))
    law, o = result.law, result.options
    units = P.loss_units(o["loss_column"])
    d = _Doc()
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

    # the answer first: coefficients, then how the points were chosen
    d.h(2, "Coefficients per variant")
    d.md_table(coefficient_table(result, "markdown"))

    if result.comparison or result.universality_across:
        from .compare import comparison_table, universality_words
        d.h(2, f"Comparing variants (reference: {result.comparison.get('reference', '-')})")
        if result.comparison:
            d.md_table(comparison_table(result.comparison, "markdown"))
        d.ul(universality_words(result.universality_across))

    if preregistered is not None:
        _preregistered(d, preregistered)

    d.h(2, "Which points were fitted")
    d.ul(result.notes)
    if result.exclusions:
        d.table(["rule", "value", "points dropped", "cells (first)", "why"],
                [[e["rule"], e["value"], e["n_points"], ", ".join(map(str, e["cells"][:6])), e["detail"]]
                 for e in result.exclusions])
    else:
        d.p("No point was excluded.")
    curves = [k for k in made if k.startswith("eval_curves_")]
    if curves:
        d.h(2, "Eval curves of every cell")
        for key in curves:
            d.img(made[key], PLOT_TEXT["eval_curves"], root)

    for v, vf in result.variants.items():
        vd = vf.to_dict()
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
        if "lr_envelope" in vd:   # --points best-lr: which lr won for each shape and budget
            from .points import shape_text
            d.h(3, "Best learning rate per shape")
            d.p(vd["lr_envelope"]["selection"] + ". " + vd["lr_envelope"]["edge"] + ".")
            d.table(["shape, budget", "best lr", "loss", "lrs swept", "edge"],
                    [[shape_text(sh), f"{sh['best_lr']:g}", f"{sh['loss']:.4g}",
                      ", ".join(f"{x:g}" for x in sh["lrs"]), sh["edge"] or ""]
                     for sh in vd["lr_envelope"]["shapes"]])
        rows = [[k, *_iv(iv), f"{FLAG_TEXT[iv['flag']][0]}: {iv['flag_meaning']}" if "flag" in iv else ""]
                for k, iv in {**vd["params"], **vd.get("exponents", {})}.items()]
        d.h(3, "Parameters")
        d.table(["parameter", "value", "lo", "hi", "flag"], rows)
        if "universality_test" in vd:
            ut = vd["universality_test"]
            d.p("Universality exponents (τ 1/3, m 1, ℓ 1) inside the intervals: "
                + ", ".join(f"{k}: {({True: 'yes', False: 'NO'}).get(x['inside_interval'], 'undetermined')}"
                            for k, x in ut.items() if isinstance(x, dict))
                + f"; verdict: {ut.get('verdict') or 'n/a'}.")
        der = vd["derived"]
        rows = [[k, *_iv(iv), DESCRIPTIONS.get(k, "")] for k, iv in der.items()
                if isinstance(iv, dict) and "value" in iv]
        if rows:
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
        if "frontier" in vd:
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
            d.ul([f"closed form assumes {fr['closed_form_assumes']}; numerical_* use the real FLOPs per token"
                  + (f": {fr['flops_model']}" if "flops_model" in fr else ""),
                  f"compute of the runs: {fmt(fr['C_data_range'][0], 3)} to {fmt(fr['C_data_range'][1], 3)}; "
                  "rows beyond it extrapolate the fitted law by the factor shown"
                  if fr.get("C_data_range") else "compute of the runs unknown"])
        if vd["holdout"]:
            d.h(3, "Held-out validation")
            d.table(["held out", "train points", "test points", "mean |rel err|", "max |rel err|"],
                    [[h["name"], h["n_train"] if "n_train" in h else
                      (f"({h['n_folds']} folds)" if "n_folds" in h else ""), h.get("n_test", ""),
                      f"{100 * h['mean_abs_rel_error']:.3g}%" if "mean_abs_rel_error" in h else h.get("skipped", ""),
                      f"{100 * h['max_abs_rel_error']:.3g}%" if "max_abs_rel_error" in h else ""]
                     for h in vd["holdout"]])
        if "holdout_predictions" in vd:
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
                    [[x["cell"], *(fmt(x[k]) for k in keys), fmt(x["actual"]), *_iv({"value": x["prediction"],
                      "lo": x["lo"], "hi": x["hi"]}), f"{100 * x['rel_error']:+.2f}%", "yes" if x["inside"] else "NO"]
                     for x in h["rows"]])
        if vd["exclusion_scan"]:
            d.h(3, "Exclusion scan")
            names = law.param_names
            head = ["rule", "points"] + names + ["(m/ℓ)*", "D*/N*"]
            rows = []
            for s in vd["exclusion_scan"]:
                rule = ", ".join(f"{k}={fmt(s[k])}" for k in ("drop_highest", "min_tau") if k in s)
                if "skipped" in s:
                    rows.append([rule, s["n_points"]] + ["skipped"] + [""] * (len(head) - 3))
                else:
                    rows.append([rule, s["n_points"]] + [fmt(s["params"][n]) for n in names]
                                + [fmt(s.get("m_over_l_star", float("nan"))),
                                   fmt(s.get("D_over_N_star", float("nan")))])
            d.table(head, rows)
        d.h(3, "Plots")
        for name in ("loss_vs_time", "collapse", "width_depth", "residuals"):
            key = f"{name}_{P.slug(v)}"
            if key in made:
                d.img(made[key], PLOT_TEXT[name], root)
    if "frontier" in made:
        d.h(2, "Compute frontier")
        d.img(made["frontier"], PLOT_TEXT["frontier"], root)

    d.h(2, "Provenance")
    d.md.append("\n".join(f"- {k}: `{v}`" for k, v in prov.items()) + "\n")
    d.html.append('<dl class="prov">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                                for k, v in prov.items()) + "</dl>")
    d.p("Files beside this page: fit.json (every coefficient, exponent and derived quantity with its "
        "interval at full precision, and the exclusions), provenance.json, coefficients.md / .csv / .tex, "
        "plots/*.png and *.pdf.")
    (root / "index.md").write_text("\n".join(d.md))
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><title>" + html.escape(title)
            + f"</title><style>{CSS}</style></head><body>" + "\n".join(d.html) + "</body></html>\n")
    index = root / "index.html"
    index.write_text(page)
    return index
