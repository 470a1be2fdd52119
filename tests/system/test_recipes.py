"""The multi-host recipes in scripts/ (pod.sh, slurm.sbatch, ssh.sh, install.sh): their argument
handling, the commands they print with --print, and their control flow with gcloud, srun, scontrol,
ssh and the installer replaced by stubs that log their arguments. No TPU, SLURM or second host is
reached here: whether gcloud, srun and uv accept these commands is not tested."""
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["install.sh", "pod.sh", "slurm.sbatch", "ssh.sh"]


def _sh(script, *args, env=None, cwd=None):
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, cwd=cwd)


def _stubs(tmp_path, **bodies):
    """A folder of executables `name` that append their arguments (one line, shell-quoted) to
    tmp/log and then run `body`; returns the PATH that finds them first."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    for name, body in bodies.items():
        (bin_ / name).write_text(f'#!/bin/bash\necho "{name} $(printf "%q " "$@")" >> {tmp_path}/log\n{body}\n')
        (bin_ / name).chmod(0o755)
    return f"{bin_}:{os.environ['PATH']}"


def _log(tmp_path):
    return [shlex.split(line) for line in (tmp_path / "log").read_text().splitlines()]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_with_a_usage_line(script):
    p = _sh(script, "--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: ") and "--print" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("script,args,why", [
    ("install.sh", ["--bogus"], "unknown option --bogus"),
    ("install.sh", ["tpu", "gcs"], "one EXTRAS argument at most"),
    ("pod.sh", [], "give the TPU name and the grid spec"),
    ("pod.sh", ["my-slice", "configs/demo.yaml"], "--zone is required"),
    ("pod.sh", ["--zone"], "--zone needs a value"),
    ("pod.sh", ["--zone", "z", "--worker=all", "s", "g.yaml"], "unknown option --worker=all"),
    ("slurm.sbatch", [], "give the grid spec first"),
    ("slurm.sbatch", ["--store", "x"], "give the grid spec first"),
    ("ssh.sh", ["h1", "h2"], "give the hosts, then -- and the grid spec"),
    ("ssh.sh", ["--", "g.yaml"], "give the hosts, then -- and the grid spec"),
    ("ssh.sh", ["--dir"], "--dir needs a value"),
])
def test_bad_arguments_exit_2_with_the_usage(script, args, why):
    p = _sh(script, *args)
    assert p.returncode == 2 and p.stderr.startswith("usage: ") and why in p.stderr, p.stdout + p.stderr
    assert p.stdout == ""


def test_install_prints_uv_python_venv_and_one_install():
    lines = _sh("install.sh", "--print", "tpu,gcs", env={"SG_PYTHON": "3.11"}).stdout.splitlines()
    assert lines == [
        f"cd {ROOT}",
        "sh -c 'command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh'",
        "uv python install 3.11",
        "uv venv --allow-existing --python 3.11 .venv",
        "uv pip install --python .venv/bin/python --quiet -c constraints.txt -e '.[tpu,gcs]'",
        ".venv/bin/python -c 'import scaling_grid.grid.cli'"]
    assert "-e ." in _sh("install.sh", "--print").stdout.splitlines()[4]  # no extras


def test_pod_prints_pack_copy_install_then_run_on_every_worker(tmp_path):
    p = _sh("pod.sh", "--print", "--zone", "us-central2-b", "--project=p1", "my-slice", "configs/my-grid.yaml",
            "--store", "gs://b/grids/g", "--shard", "0/2", env={"TMPDIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    tar, scp, setup, run = (shlex.split(line) for line in p.stdout.splitlines())
    pack = f"{tmp_path}/scaling-grid-pod.tar.gz"
    assert tar[:3] == ["tar", "czf", pack] and "--exclude=./.git" in tar and "--exclude=./.venv" in tar
    where = ["--zone=us-central2-b", "--project=p1", "--worker=all"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", pack, "my-slice:scaling-grid.tar.gz", *where]
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-slice", *where]
    assert setup[:-1] == ssh and run[:-1] == ssh
    assert setup[-1] == ("--command=mkdir -p ~/scaling-grid && tar xzf ~/scaling-grid.tar.gz -C ~/scaling-grid "
                         "&& SG_PYTHON=3.12 ~/scaling-grid/scripts/install.sh tpu,gcs")
    assert run[-1] == ("--command=cd ~/scaling-grid && .venv/bin/scaling-grid run configs/my-grid.yaml --store "
                       "gs://b/grids/g --shard 0/2 --distributed --no-progress")
    for line in (setup, run):  # what each worker runs is one valid shell command
        assert subprocess.run(["bash", "-n", "-c", line[-1].removeprefix("--command=")]).returncode == 0


def test_pod_runs_gcloud_in_order_with_the_code_packed(tmp_path):
    path = _stubs(tmp_path, gcloud="exit 0")
    p = _sh("pod.sh", "--zone", "z", "s", "configs/demo.yaml", env={"PATH": path, "TMPDIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    calls = _log(tmp_path)
    assert [c[4] for c in calls] == ["scp", "ssh", "ssh"] and "install.sh" in calls[1][-1]
    with tarfile.open(tmp_path / "scaling-grid-pod.tar.gz") as t:
        names = {n.removeprefix("./").split("/")[0] for n in t.getnames()}
    assert {"scripts", "trainer", "grid", "analysis", "src", "configs", "pyproject.toml", "constraints.txt"} <= names
    assert not names & {".git", ".venv", "stores", "data", ".jax_cache", ".mypy_cache", ".ruff_cache"}


def test_slurm_prints_one_install_before_srun_and_one_task_per_node():
    p = _sh("slurm.sbatch", "--print", "configs/my-grid.yaml", "--store", "/shared/stores/my grid")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "env SG_PYTHON=3.12 scripts/install.sh cuda12",
        "source .venv/bin/activate",
        "srun --ntasks-per-node=1 scaling-grid run configs/my-grid.yaml --store '/shared/stores/my grid' "
        "--distributed --no-progress"]
    head = (ROOT / "scripts" / "slurm.sbatch").read_text()
    for line in ("#SBATCH --ntasks-per-node=1", "#SBATCH --requeue", "#SBATCH --signal=TERM@120"):
        assert f"\n{line}\n" in head


@pytest.mark.parametrize("srun_rc,requeued", [(143, True), (75, True), (1, False), (0, False)])
def test_slurm_installs_once_activates_and_requeues(tmp_path, srun_rc, requeued):
    """The batch script as sbatch runs it (a copy, from the submit folder): the installer once, then
    srun under the activated environment; exit 143 or 75 requeues the job."""
    sub = tmp_path / "checkout"
    (sub / "scripts").mkdir(parents=True)
    (sub / ".venv" / "bin").mkdir(parents=True)
    (sub / "scripts" / "install.sh").write_text(f'#!/bin/bash\necho "install $*" >> {tmp_path}/log\n')
    (sub / "scripts" / "install.sh").chmod(0o755)
    (sub / ".venv" / "bin" / "activate").write_text('export PATH="/venv-was-activated:$PATH"\n')
    path = _stubs(tmp_path, srun=f'echo "PATH=$PATH" >> {tmp_path}/srun.env; exit {srun_rc}', scontrol="exit 0")
    spool = tmp_path / "spool.sbatch"  # sbatch runs a copy of the script, elsewhere
    spool.write_text((ROOT / "scripts" / "slurm.sbatch").read_text())
    p = subprocess.run(["bash", str(spool), "g.yaml", "--store", "/s"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": path, "SLURM_SUBMIT_DIR": str(sub), "SLURM_JOB_ID": "77"})
    assert p.returncode == srun_rc, p.stderr
    calls = _log(tmp_path)
    assert calls[0] == ["install", "cuda12"] and [c[0] for c in calls].count("install") == 1
    assert calls[1] == ["srun", "--ntasks-per-node=1", "scaling-grid", "run", "g.yaml", "--store", "/s",
                        "--distributed", "--no-progress"]
    assert "/venv-was-activated:" in (tmp_path / "srun.env").read_text()
    assert (calls[2:] == [["scontrol", "requeue", "77"]]) == requeued and len(calls) == 2 + requeued


def test_ssh_prints_installs_in_turn_then_one_process_per_host():
    p = _sh("ssh.sh", "--print", "--dir", "/shared/sg", "me@gpu1", "gpu2", "--", "g.yaml", "--store", "/s")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:2] == [f"ssh {h} 'cd /shared/sg && SG_PYTHON=3.12 scripts/install.sh cuda12'" for h in ("me@gpu1", "gpu2")]
    for i, (h, line) in enumerate(zip(("me@gpu1", "gpu2"), lines[2:4])):
        assert line == (f"ssh {h} 'cd /shared/sg && echo $$ > /tmp/scaling-grid-ssh-{i}.pid && exec "
                        f".venv/bin/scaling-grid run g.yaml --store /s --distributed --coordinator gpu1:8476 "
                        f"--num-processes 2 --process-id {i} --no-progress' &")
    assert lines[4:] == ["wait"]


def test_ssh_waits_for_every_host_and_exits_with_the_first_failure(tmp_path):
    path = _stubs(tmp_path, ssh='case "$2" in *install.sh*) exit 0;; esac; [ "$1" = h2 ] && exit 75; sleep 1')
    p = _sh("ssh.sh", "h1", "h2", "h3", "--", "g.yaml", env={"PATH": path})
    assert p.returncode == 75, p.stderr
    calls = _log(tmp_path)
    assert [c[1] for c in calls[:3]] == ["h1", "h2", "h3"] and all("install.sh" in c[2] for c in calls[:3])
    runs = sorted(calls[3:])
    assert [c[1] for c in runs] == ["h1", "h2", "h3"]
    assert all(f"--num-processes 3 --process-id {i}" in c[2] for i, c in enumerate(runs))


def _doc_tokens() -> list[str]:
    """Every token of docs/grid.md's bash blocks, as a shell reads them (continuations joined,
    comments dropped), with runs of white space inside a token (a quoted multi-line --command) made one
    space."""
    text = (ROOT / "docs" / "grid.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("bash\n")]
    return [" ".join(t.split()) for b in blocks for t in shlex.split(b.replace("\\\n", " "), comments=True)]


def _in_docs(command: str) -> bool:
    want, have = [" ".join(t.split()) for t in shlex.split(command)], _doc_tokens()
    return any(have[i:i + len(want)] == want for i in range(len(have)))


@pytest.mark.parametrize("script,args", [
    ("pod.sh", ["--print", "--zone", "us-central2-b", "my-slice", "configs/my-grid.yaml", "--store",
                "gs://my-bucket/grids/my-grid", "--compile-cache", "gs://my-bucket/jax-cache"]),
    ("slurm.sbatch", ["--print", "configs/my-grid.yaml", "--store", "/shared/stores/my-grid"]),
])
def test_the_docs_show_what_the_scripts_run(script, args):
    """docs/grid.md spells out each step of pod.sh and slurm.sbatch, and those steps are what the
    scripts run (for the docs' example), so the pasted recipe and the script do not drift apart."""
    lines = _sh(script, *args, env={"TMPDIR": "/tmp"}).stdout.splitlines()
    assert lines and [line for line in lines if not _in_docs(line)] == []


def test_the_docs_show_an_ssh_process_as_the_script_starts_it():
    p = _sh("ssh.sh", "--print", "--dir", "/shared/scaling-grid", "gpu1", "gpu2", "gpu3", "gpu4", "--",
            "configs/my-grid.yaml", "--store", "/shared/stores/my-grid")
    assert _in_docs(p.stdout.splitlines()[5].removesuffix(" &"))  # host 1's process
