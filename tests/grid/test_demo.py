"""`scaling-grid demo`: the embedded demo spec is package data (one copy: src/scaling_grid/configs links
to configs/), a wheel carries it, and the command finds it from an install in another folder without
any extra's package (the base dependencies run the demo)."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scaling_grid.grid.cli import main
from scaling_grid.grid.demo import embedded_config
from scaling_grid.trainer import ConfigError

REPO = Path(__file__).resolve().parents[2]
# what the test, tensorboard, wandb and gcs extras bring: the demo must run with none of them importable
EXTRAS = ["pytest", "ruff", "mypy", "tensorboardX", "tensorboard", "wandb", "gcsfs", "fake_gcs_server"]


def test_the_embedded_spec_is_the_repository_file():
    path = embedded_config("demo.yaml")
    assert path.samefile(REPO / "configs" / "demo.yaml")  # a link, not a copy: one source of truth
    with pytest.raises(ConfigError, match="missing from this install"):
        embedded_config("nope.yaml")


def test_demo_is_a_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--store" in out and "--out" in out and "--dry-run" in out


def _wheel(tmp: Path) -> Path:
    """A wheel built as `pip wheel --no-deps .` builds it (in an isolated environment with the
    build-system requirements), from a copy of the sources: the worktree gets no build/ or egg-info."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "src", "trainer", "grid", "analysis", "configs"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, src / name, **({"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")}
                                         if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("scaling_grid-*.whl")
    return wheel


@pytest.mark.slow
def test_a_wheel_ships_the_configs_and_runs_the_demo_from_anywhere(tmp_path):
    wheel = _wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for cfg in (REPO / "configs").glob("*.yaml"):
            assert z.read(f"scaling_grid/configs/{cfg.name}") == cfg.read_bytes()
        z.extractall(tmp_path / "site")  # a pure-Python wheel unpacked is an install (less the script)
    assert "scaling_grid/grid/demo.py" in names
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    block = ";".join(f"sys.modules[{m!r}] = None" for m in EXTRAS)  # an import of any of them fails
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", f"import sys; {block}; from scaling_grid.grid.cli import main; "
                          "sys.exit(main(['demo', '--dry-run']))"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"demo: the grid {tmp_path / 'site' / 'scaling_grid' / 'configs' / 'demo.yaml'}" in run.stdout
    assert f"then its report goes to {cwd / 'reports' / 'demo'}" in run.stdout
    assert "to run: 48 cells" in run.stdout and "<- this spec" in run.stdout
    assert not any(cwd.iterdir())  # a dry run writes nothing


def test_demo_script_installs_the_base_dependencies_only_then_runs_the_demo(tmp_path):
    """scripts/demo.sh against a stub .venv: pip is asked for the project with no extras (no test or
    developer tools), then `scaling-grid demo` runs with the script's arguments."""
    (tmp_path / "scripts").mkdir()
    for name in ("env.sh", "demo.sh"):
        shutil.copy(REPO / "scripts" / name, tmp_path / "scripts" / name)
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    for name in ("python", "pip", "scaling-grid"):  # each records its arguments
        (bin_ / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls"\n')
        (bin_ / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "EXTRAS"}
    subprocess.run(["bash", str(tmp_path / "scripts" / "demo.sh"), "--dry-run"], env=env, check=True, timeout=60)
    assert (tmp_path / "calls").read_text().splitlines() == [
        "pip install -q -c constraints.txt -e .", "scaling-grid demo --dry-run"]
