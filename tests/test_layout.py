"""The layout limits the project holds itself to (issue 20): modules readable in one sitting, functions
that fit a screen, no import cycles between modules, no private name used outside its module.
scripts/layout.py prints where each measure stands. An exception is listed here with its reason."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("layout", ROOT / "scripts" / "layout.py")
layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layout)

MAX_MODULE, MAX_FUNCTION = 400, 80
LONG_MODULES: dict[str, str] = {}      # module -> why it stays over MAX_MODULE lines
LONG_FUNCTIONS: dict[str, str] = {}    # module.function -> why it stays over MAX_FUNCTION lines


def test_modules_fit_in_one_sitting():
    over = {m: n for n, m in layout.sizes(ROOT) if n > MAX_MODULE and m not in LONG_MODULES}
    assert not over, f"modules over {MAX_MODULE} lines (split them, or list them with a reason): {over}"


def test_functions_fit_a_screen():
    over = {f: n for n, f in layout.functions(ROOT) if n > MAX_FUNCTION and f not in LONG_FUNCTIONS}
    assert not over, f"functions over {MAX_FUNCTION} lines (split them, or list them with a reason): {over}"


def test_no_import_cycles():
    assert layout.cycles(layout.imports(ROOT)) == []


def test_no_private_name_is_imported_across_modules():
    assert layout.private_imports(ROOT) == []


def test_the_measures_see_what_they_measure():
    """The script finds the modules, their imports and a known cycle-free bottom (config imports no
    package module above it), so an empty answer above is not a script that looked at nothing."""
    graph = layout.imports(ROOT)
    assert len(layout.modules(ROOT)) > 30 and "trainer.config" in graph["trainer.model"]
    assert graph["trainer.config"] == set()
    assert layout.cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
