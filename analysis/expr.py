"""Row conditions over a table's columns (``--where``, ``--holdout``), evaluated safely.

An expression such as ``"dataset == 'rpj' and tokens / N >= 20"`` is parsed with :mod:`ast` and
evaluated by walking the tree over whole columns; nothing is passed to ``eval``. Allowed:

- names of the table's columns (the file's own names, and the schema names ``--map`` adds);
- numbers, strings, ``True``/``False``, and tuples or lists of them (right of ``in``);
- arithmetic ``+ - * / // % **`` and unary ``-``/``+``; the functions ``log``, ``log10``,
  ``log2``, ``exp``, ``sqrt``, ``abs``;
- comparisons ``== != < <= > >=`` (chained: ``16 <= m < 512``), ``in`` / ``not in``;
- ``and``, ``or``, ``not``, parentheses.

Anything else (attributes, subscripts, calls to other names, lambdas, comprehensions) is an
AnalysisError naming it. A NaN compares false, so rows with a missing value do not match.
"""
from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import AnalysisError

MAX_LENGTH = 2000
MAX_DEPTH = 64  # nested operators: the evaluator recurses once per level
FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "log": np.log, "log10": np.log10, "log2": np.log2, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
    ast.Gt: np.greater, ast.GtE: np.greater_equal}
_SYMBOL = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
           ast.In: "in", ast.NotIn: "not in"}


def parse(expr: str, what: str = "--where") -> ast.Expression:
    """Parse ``expr`` and check that it uses only the allowed constructs (before any data is read)."""
    if not isinstance(expr, str) or not expr.strip():
        raise AnalysisError(f"{what}: empty condition; e.g. \"dataset == 'rpj' and tokens / N >= 20\"")
    if len(expr) > MAX_LENGTH:
        raise AnalysisError(f"{what}: the condition is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise AnalysisError(f"{what} {expr!r}: not a valid condition ({e.msg} at column {e.offset}); "
                            f"e.g. \"dataset == 'rpj' and tokens / N >= 20\"") from None
    except (RecursionError, MemoryError):
        raise AnalysisError(f"{what}: the condition nests deeper than Python can parse") from None
    if _depth(tree) > MAX_DEPTH:
        raise AnalysisError(f"{what}: the condition nests more than {MAX_DEPTH} levels deep")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
                             ast.BinOp, ast.Compare, ast.Name, ast.Load, ast.Tuple, ast.List,
                             *_ARITH, *_COMPARE, ast.In, ast.NotIn)):
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS \
                and len(node.args) == 1 and not node.keywords:
            continue
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise AnalysisError(f"{what} {expr!r}: {name}(...) is not allowed; the functions are "
                                f"{', '.join(FUNCTIONS)} (one argument each)")
        raise AnalysisError(f"{what} {expr!r}: {type(node).__name__.lower()} "
                            f"({ast.unparse(node) if isinstance(node, ast.expr) else '?'}) is not allowed; "
                            f"a condition uses column names, numbers, strings, arithmetic, comparisons, "
                            f"in, and/or/not")
    return tree


def _depth(tree: ast.AST) -> int:
    """The deepest nesting of the tree, counted without recursion."""
    deepest, todo = 0, [(tree, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        todo.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def evaluate(expr: str, table: Mapping[str, Any], what: str = "--where") -> np.ndarray:
    """The boolean mask of the rows of ``table`` (a dict of equal-length columns) where ``expr`` holds."""
    tree = parse(expr, what)
    cols = {k: np.asarray(v) for k, v in table.items()}
    n = len(next(iter(cols.values()))) if cols else 0
    ev = _Evaluator(expr, cols, what)
    with np.errstate(all="ignore"):
        out = ev.value(tree.body)
    if not _is_bool(out):
        raise AnalysisError(f"{what} {expr!r} is not a condition: it gives {_kind(out)} values, not true/false "
                            f"(compare them, e.g. '... >= 20')")
    return np.broadcast_to(np.asarray(out, bool), (n,)).copy()


def _is_bool(x: Any) -> bool:
    return np.asarray(x).dtype == bool


def _is_text(x: Any) -> bool:
    return np.asarray(x).dtype.kind in "US"


def _kind(x: Any) -> str:
    a = np.asarray(x)
    return "text" if a.dtype.kind in "US" else "true/false" if a.dtype == bool else "numeric"


class _Evaluator:
    def __init__(self, expr: str, cols: dict[str, np.ndarray], what: str):
        self.expr, self.cols, self.what = expr, cols, what

    def fail(self, msg: str) -> AnalysisError:
        return AnalysisError(f"{self.what} {self.expr!r}: {msg}")

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, int) and not isinstance(node.value, bool):
                try:  # in float64, as the columns are compared: a Python int would wrap in an int64 column
                    return float(node.value)
                except OverflowError:
                    raise self.fail(f"the number {ast.unparse(node)[:40]} is too large for a float") from None
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.cols:
                raise self.fail(f"no column {node.id!r}; the table has: {', '.join(self.cols)}")
            return self.cols[node.id]
        if isinstance(node, ast.BoolOp):
            vals = [self.condition(v, "and" if isinstance(node.op, ast.And) else "or") for v in node.values]
            f = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            acc = vals[0]
            for v in vals[1:]:
                acc = f(acc, v)
            return acc
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return np.logical_not(self.condition(node.operand, "not"))
            x = self.number(node.operand, "-" if isinstance(node.op, ast.USub) else "+")
            return np.negative(x) if isinstance(node.op, ast.USub) else x
        if isinstance(node, ast.BinOp):
            a, b = self.number(node.left, "arithmetic"), self.number(node.right, "arithmetic")
            res = _ARITH[type(node.op)](np.asarray(a, float), np.asarray(b, float))
            if np.any(~np.isfinite(res) & np.isfinite(a) & np.isfinite(b)):
                raise self.fail(f"{ast.unparse(node)} overflows or divides by zero")
            return res
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)  # checked by parse
            return FUNCTIONS[node.func.id](self.number(node.args[0], node.func.id + "()"))
        if isinstance(node, ast.Compare):
            out: Any = True
            left = self.value(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)):
                    res = self.membership(left, right_node, op)
                    right = None
                else:
                    right = self.value(right_node)
                    if _is_text(left) != _is_text(right):
                        raise self.fail(f"compares {_kind(left)} with {_kind(right)} "
                                        f"({ast.unparse(node)}): quote text values, e.g. dataset == 'rpj'")
                    res = _COMPARE[type(op)](left, right)
                out = np.logical_and(out, res)
                left = right
            return out
        if isinstance(node, (ast.Tuple, ast.List)):
            raise self.fail(f"a list ({ast.unparse(node)}) belongs on the right of 'in'")
        raise self.fail(f"{type(node).__name__} is not allowed")  # parse() let nothing else through

    def condition(self, node: ast.expr, op: str) -> np.ndarray:
        x = self.value(node)
        if not _is_bool(x):
            raise self.fail(f"'{op}' needs conditions, and {ast.unparse(node)!r} gives {_kind(x)} values")
        return np.asarray(x, bool)

    def number(self, node: ast.expr, op: str) -> Any:
        x = self.value(node)
        if _is_text(x):
            raise self.fail(f"{op} on text ({ast.unparse(node)})")
        return np.asarray(x, float) if _is_bool(x) else x

    def membership(self, left: Any, node: ast.expr, op: ast.cmpop) -> np.ndarray:
        if not isinstance(node, (ast.Tuple, ast.List)) or not all(isinstance(e, ast.Constant) for e in node.elts):
            raise self.fail(f"'{_SYMBOL[type(op)]}' needs a list of values on its right, e.g. "
                            f"dataset in ('rpj', 'c4')")
        values = [e.value for e in node.elts]  # type: ignore[attr-defined]
        if values and any(isinstance(v, str) != _is_text(left) for v in values):
            raise self.fail(f"'{_SYMBOL[type(op)]}' compares {_kind(left)} values with "
                            f"{'text' if isinstance(values[0], str) else 'numbers'}")
        res = np.isin(np.asarray(left), np.asarray(values)) if values else np.zeros(np.shape(left), bool)
        return np.logical_not(res) if isinstance(op, ast.NotIn) else res

