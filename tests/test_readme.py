"""The examples of README.md and docs/*.md reproduce byte for byte.

Convention (docs/developing.md, "Examples that are tested"): a fenced block right after an HTML comment
`<!-- example: NAME -->` holds commands, each a line starting with `$ ` (continued on the next lines
while a line ends with a backslash), each followed by the exact output it prints (stdout and stderr in
the order written, as on a terminal). The test runs the commands of one example in order with bash in a
fresh empty folder, then compares each command's output with the block's. Normalised, because they
must vary: the folder's absolute path prints as `$PWD`; nothing else. A block that shows a recorded
run instead (hours of training, a pod) is marked `<!-- recorded: WHAT -->`, and every README block
with a `$ ` line carries one of the two markers.

After a change to what a command prints: `SG_UPDATE_EXAMPLES=1 pytest tests/test_readme.py` rewrites
each example's output from a real run (read the diff before committing it).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARK = re.compile(r"^<!-- (example|recorded): ?(.*?) -->\n```[a-z]*\n(.*?)^```$", re.M | re.S)


@dataclass(frozen=True)
class Example:
    name: str
    file: Path
    body: str  # the fenced block's text, as in the file
    block: str  # the marker, the fences and the body

    def steps(self) -> list[tuple[str, str]]:
        """(command, expected output) pairs; the command keeps its continuation lines."""
        steps: list[tuple[str, list[str]]] = []
        lines = self.body.splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                if not steps:
                    raise ValueError(f"{self.file.name}, example {self.name}: output before the first `$ ` line")
                steps[-1][1].append(lines[i])
                i += 1
                continue
            cmd = [lines[i][2:]]
            while cmd[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd.append(lines[i])
            steps.append(("\n".join(cmd), []))
            i += 1
        return [(c, "\n".join(out)) for c, out in steps]


def examples(kind: str = "example", files: list[Path] = FILES) -> list[Example]:
    return [Example(m[2], f, m[3], m[0]) for f in files for m in MARK.finditer(f.read_text()) if m[1] == kind]


def run_step(cmd: str, where: Path) -> str:
    bindir = str(Path(sys.executable).parent)  # this environment's python and scaling-grid first
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1",
           "JAX_PLATFORMS": "cpu"}
    env.pop("COLUMNS", None)
    run = subprocess.run(["bash", "-c", cmd], cwd=where, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=600)
    return run.stdout.replace(str(where), "$PWD").rstrip("\n")


def test_every_readme_command_block_is_marked():
    """A fence with `$ ` lines is either a tested example or a marked recording, never silently stale."""
    text = (REPO / "README.md").read_text()
    marked = {m.start(3) for m in MARK.finditer(text)}
    for m in re.finditer(r"^```[a-z]*\n(.*?)^```$", text, re.M | re.S):
        if re.search(r"^\$ ", m[1], re.M):
            assert m.start(1) in marked, f"README.md: a block of commands without a marker:\n{m[1][:300]}"
    names = [e.name for e in examples()]
    assert len(names) == len(set(names)) and len(names) >= 4, names


@pytest.mark.slow
@pytest.mark.parametrize("ex", examples(), ids=lambda e: e.name)
def test_example_reproduces(ex: Example, tmp_path: Path):
    got = [(cmd, run_step(cmd, tmp_path)) for cmd, _ in ex.steps()]
    if os.environ.get("SG_UPDATE_EXAMPLES"):
        body = "".join(f"$ {cmd}\n" + (out + "\n" if out else "") for cmd, out in got)
        ex.file.write_text(ex.file.read_text().replace(ex.block, ex.block.replace(ex.body, body), 1))
        return
    for (cmd, want), (_, out) in zip(ex.steps(), got):
        assert out == want, f"{ex.file.name}, example {ex.name}: `{cmd}` printed\n{out}\n--- instead of ---\n{want}"
