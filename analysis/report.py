"""A self-contained report directory: ``index.html`` and ``index.md`` (open either without Python),
the coefficient tables (md/csv/tex), the fit as JSON, and every plot as PNG and PDF.

    write_report(table, out_dir, **fit_options) -> Path of index.html
"""
from __future__ import annotations

import html
import os
from pathlib import Path


from . import plots as P
from .errors import AnalysisError
from .fit import FitResult, run_fit
from .tables import FLAG_TEXT, coefficient_table, fmt, write_tables

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
    "frontier": "Compute-optimal loss and model size: closed form with C = 6ND (dashed) and numerical "
                "with the grid's real FLOPs per token (solid); bands are bootstrap intervals; dots "
                "are the runs; the grey region, beyond the largest run's compute, is extrapolation.",
}


class _Doc:
    """Builds the same report as Markdown and HTML."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def h(self, level: int, text: str):
        self.md.append("#" * level + " " + text + "\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str):
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def ul(self, items):
        items = list(items)
        if not items:
            return
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "</ul>")

    def table(self, head, rows):
        if not rows:
            return
        esc = lambda s: str(s).replace("|", "\\|")
        self.md.append("\n".join(["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
                                 + ["| " + " | ".join(map(esc, r)) + " |" for r in rows]) + "\n")
        self.html.append("<table><thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
                         + "</tr></thead><tbody>" + "".join(
                             "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                             for r in rows) + "</tbody></table>")

    def img(self, png: Path, pdf: Path, caption: str, root: Path):
        a, b = png.relative_to(root).as_posix(), pdf.relative_to(root).as_posix()
        self.md.append(f"![{caption}]({a})\n\n*{caption}* ([PDF]({b}))\n")
        self.html.append(f'<figure><a href="{a}"><img src="{a}" alt="{html.escape(caption)}"></a>'
                         f'<figcaption>{html.escape(caption)} (<a href="{b}">PDF</a>)</figcaption></figure>')

    def raw_md_table(self, text: str):
        self.md.append(text)


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}
figcaption{font-size:0.9em;color:#555}code{background:#f5f5f5}"""


def _iv(iv: dict) -> list[str]:
    return [fmt(iv.get("value")), fmt(iv.get("lo")), fmt(iv.get("hi"))]


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


def write_report(table, out_dir: str | Path, *, result: FitResult | None = None,
                 title: str = "scaling-grid fit report", **fit_options) -> Path:
    """Fit (unless ``result`` is given; ``fit_options`` go to :func:`run_fit`) and write the report
    directory. Returns the path of ``index.html`` (``index.md`` lies beside it)."""
    if result is None:
        result = run_fit(table, **fit_options)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "fit.json").write_text(result.to_json())
    write_tables(result, root)
    made = P.plot_all(result, root / "plots")
    law, o = result.law, result.options
    d = _Doc()
    d.h(1, title)
    d.p(f"Law {law.name}: L = {law.formula}. Loss: {o['loss_column']}; time variable: "
        f"{o['time_column'] or 'none'} ({o['time'] or '-'}). Robust loss: "
        + (f"Huber δ = {o['huber_delta']:g}" if o["huber_delta"] else "least squares")
        + f"; intervals: {100 * o['ci']:g}% percentile bootstrap over whole runs, B = {o['n_boot']}, seed {o['seed']}.")
    d.p("Files: fit.json (every coefficient, exponent and derived quantity with its interval, and the "
        "exclusions), coefficients.md / .csv / .tex, plots/*.png and *.pdf.")

    d.h(2, "Which points were fitted")
    d.ul(result.notes)
    if result.exclusions:
        d.table(["rule", "value", "points dropped", "cells (first)", "why"],
                [[e["rule"], e["value"], e["n_points"], ", ".join(map(str, e["cells"][:6])), e["detail"]]
                 for e in result.exclusions])
    else:
        d.p("No point was excluded.")

    d.h(2, "Coefficients per variant")
    md_table = coefficient_table(result, "markdown")
    d.md.append(md_table)
    lines = [ln for ln in md_table.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    d.html.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                  + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r)
                                                     + "</tr>" for r in body) + "</tbody></table>")
    d.html.append("<ul>" + "".join(f"<li>{html.escape(ln[2:])}</li>" for ln in md_table.splitlines()
                                   if ln.startswith("- ")) + "</ul>")

    for v, vf in result.variants.items():
        vd = vf.to_dict()
        d.h(2, f"Variant {v}")
        d.p(f"{vd['n_points']} points from {vd['n_runs']} runs; fit error (rms of relative residuals) "
            f"{100 * vf.rms_rel_error:.3g}%, largest {100 * vd['fit']['max_abs_rel_error']:.3g}%; "
            f"bootstrap resamples used {vd['n_boot']} (discarded {vd['n_boot_discarded']}).")
        if vd.get("warnings"):
            d.h(3, "Warnings")
            d.ul(vd["warnings"])
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
                     + [f"{fmt(q[k][i]['value'])} [{fmt(q[k][i]['lo'])}, {fmt(q[k][i]['hi'])}]"
                        for k in keys] for i, c in enumerate(fr["C"])])
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
                d.img(*made[key], PLOT_TEXT[name], root)
    if "frontier" in made:
        d.h(2, "Compute frontier")
        d.img(*made["frontier"], PLOT_TEXT["frontier"], root)
    (root / "index.md").write_text("\n".join(d.md))
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title)
            + f"</title><style>{CSS}</style></head><body>" + "\n".join(d.html) + "</body></html>\n")
    index = root / "index.html"
    index.write_text(page)
    return index
