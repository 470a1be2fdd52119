"""One notation for what a person reads: the Unicode names (c_τ, (m/ℓ)*, D*/N*, L0) in the report's
text, tables and plots; the JSON keys (c_tau, m_over_l_star, ...) only in the JSON and CSV.

    name(key) -> the Unicode name of a JSON key
    text(s)   -> s with every JSON key spelled as its Unicode name (whole words only: the column
                 tau_lr and a cell id stay as they are)
"""
from __future__ import annotations

import re

from .laws import PRETTY

NAMES = {
    **PRETTY,
    "tau": "τ", "m_over_l_star": "(m/ℓ)*", "D_over_N_star": "D*/N*",
    "N_star": "N*", "D_star": "D*", "L_star": "L*",
    "numerical_N_star": "N* (real FLOPs)", "numerical_D_star": "D* (real FLOPs)",
    "numerical_L_star": "L* (real FLOPs)", "numerical_m_star": "m* (real FLOPs)",
    "numerical_l_star": "ℓ* (real FLOPs)",
    "N_star_exponent": "a (N* ∝ C^a)", "L_star_exponent": "b (L* − L0 ∝ C^(−b))",
    "shape_exponent": "e ((m/ℓ)* ∝ N^e)", "shape_loss_exponent": "s (shape term ∝ N^(−s))",
    "tau_to_tokens": "τ → tokens", "N_ref": "N_ref", "Lhat": "L̂",
}
# longest first, so numerical_N_star is not read as numerical_ + N_star; bare alpha and beta (the
# chinchilla law's A/N^alpha as its formula is written) stay words in running text
_IN_TEXT = [k for k in NAMES if k not in ("alpha", "beta")]
_WORD = re.compile(r"(?<![\w])(" + "|".join(sorted(map(re.escape, _IN_TEXT), key=len, reverse=True))
                   + r")(?![\w])")
_LITERAL = (("(m/l)", "(m/ℓ)"),)


def name(key: str) -> str:
    """The Unicode name of a JSON key (the key itself when it has none, e.g. c_m)."""
    return NAMES.get(key, key)


def text(s: str) -> str:
    """``s`` with every JSON key that is a whole word spelled as its Unicode name."""
    for a, b in _LITERAL:
        s = s.replace(a, b)
    return _WORD.sub(lambda m: NAMES[m.group(1)], s)


# the spellings a reader must never see in the report's text (tests grep the HTML for them)
JSON_SPELLINGS = ("c_tau", "c_l", "alpha_tau", "m_over_l_star", "D_over_N_star", "N_star", "D_star", "L_star",
                  "numerical_", "N_star_exponent", "L_star_exponent", "shape_loss_exponent", "tau_to_tokens",
                  "(m/l)*")
