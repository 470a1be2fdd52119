"""Packed cells (`train.pack`): runs of one shape that differ in seeds, lr and budget train in one
vmapped step, and each ends with the curve, evals and checkpoints it has when trained alone; a packed
grid's store equals the unpacked store cell by cell, SIGTERM and resume of a pack included."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from floats import assert_reordered_curves_close, assert_same_curves
from tiny import tiny_spec

from scaling_grid.grid import store as G
from scaling_grid.trainer import config as C
from scaling_grid.trainer import configfile, loop, step, tokenstore
from scaling_grid.trainer.checkpoint import saved_steps
from scaling_grid.trainer.metrics import TensorStoreSink, read_metrics
from scaling_grid.trainer.model import make_arch
from scaling_grid.trainer.preemption import Preemption

TABLE = 40  # lr tables padded to the longest run, as a grid does


def _close(a, b, what):
    """Same logged steps and schedule; losses and gradient norms as close as a vmapped matmul's other
    summation order allows (tests/floats.py: measured, with what a bug would move them by)."""
    assert_reordered_curves_close(a, b, what)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs of one shape: another seed, data seed and lr; a shorter budget ending inside a chunk
    of steps_per_call=4 (26 steps). Each trained alone, then the three as one pack, uninterrupted:
    (configs, store, metrics alone, metrics packed, their folder)."""
    root = tmp_path_factory.mktemp("pack")
    base = C.RunConfig(model=C.ModelConfig(width=32, depth=2, heads=2, seq_len=16),
                       data=C.DataConfig(root=str(root / "data")), optim=C.OptimConfig(warmup_steps=4),
                       train=C.TrainConfig(tokens=4 * 16 * 40, batch_size=4, steps_per_call=4, log_every=4,
                                           eval_every=16, eval_batches=1, ckpt_every=8, keep=20))
    cfgs = [base,
            dataclasses.replace(base, train=dataclasses.replace(base.train, seed=1, data_seed=1),
                                optim=dataclasses.replace(base.optim, lr=1e-3)),
            dataclasses.replace(base, train=dataclasses.replace(base.train, tokens=4 * 16 * 26))]
    store = tokenstore.prepare(base.data, progress=False)
    alone = []
    for i, c in enumerate(cfgs):
        r = loop.train(c, TensorStoreSink(str(root / f"alone{i}"), c.steps), root / f"ck-alone{i}", store=store,
                       table_len=TABLE)
        assert r.status == "done"
        alone.append(read_metrics(str(root / f"alone{i}")))
    out = loop.train_pack(_lanes(cfgs, root / "packed"), store=store, table_len=TABLE)
    assert [(r.status, r.step) for r in out] == [("done", 40), ("done", 40), ("done", 26)]
    packed = [read_metrics(str(root / "packed" / f"m{i}")) for i in range(3)]
    return cfgs, store, alone, packed, root


def _lanes(cfgs, where: Path):
    return [loop.Lane(c, TensorStoreSink(str(where / f"m{i}"), c.steps), where / f"ck{i}") for i, c in enumerate(cfgs)]


@pytest.mark.slow
def test_a_pack_trains_each_run_as_it_trains_alone(runs, tmp_path):
    cfgs, store, alone, packed, root = runs
    for i in range(3):
        _close(alone[i], packed[i], f"run {i}")
    assert saved_steps(root / "packed" / "ck2")[-1] == 26  # its own last state, saved inside a chunk
    assert saved_steps(root / "packed" / "ck0")[-1] == 40
    with pytest.raises(C.ConfigError, match="differ in more than"):
        wide = dataclasses.replace(cfgs[0], model=dataclasses.replace(cfgs[0].model, width=64))
        loop.train_pack(_lanes([cfgs[0], wide], tmp_path / "bad"), store=store)


@pytest.mark.parametrize("after_calls", [3, 7], ids=["early", "where-one-run-ends"])
@pytest.mark.slow
def test_a_preempted_pack_resumes_to_the_same_curves(runs, tmp_path, after_calls):
    """The flag is raised after some train calls (7: while the 26-step run is in its last chunk, which
    is cut at step 26); the pack stops where its chunks start anew, every run saved there, then the
    same pack resumes from its checkpoints."""
    cfgs, store, alone, packed, _ = runs
    steps = step.build(make_arch(cfgs[0].model, store.vocab_size), cfgs[0].optim, pack=3)
    flag, calls = Preemption(), {"n": 0}

    def train_then_signal(*args):
        calls["n"] += 1
        if calls["n"] == after_calls:
            flag.requested = True
        return steps.train(*args)

    out = loop.train_pack(_lanes(cfgs, tmp_path), store=store, table_len=TABLE,
                          steps=steps._replace(train=train_then_signal), preempt=flag)
    stopped = {r.step for r in out if r.status == "preempted"}
    assert len(stopped) == 1 and stopped.pop() % 4 == 0, out
    assert all(r.status in ("preempted", "done") for r in out)
    again = loop.train_pack(_lanes(cfgs, tmp_path), store=store, table_len=TABLE, steps=steps)
    assert [r.status for r in again] == ["done"] * 3
    for i in range(3):  # the same computation as the uninterrupted pack: bit for bit, every step
        assert_same_curves(packed[i], read_metrics(str(tmp_path / f"m{i}")), f"run {i}")


# ------------------------------------------------------------------------------- a packed grid

def _spec(data: Path, pack: int | None, axes: dict | None = None, ckpt_every: int = 8) -> str:
    """8 cells of one shape: 2 seeds x 2 lr x 2 budgets, packed `pack` at a time (None: unpacked)."""
    axes = {"width": [16], "depth": [1], "seed": [0, 1], "lr": ["3e-3", "1e-3"], "tokens": [10240, 14336],
            **(axes or {})}
    return tiny_spec("packed", axes, root=str(data), pack=pack, ckpt_every=ckpt_every)


def _cmd(spec, store, *extra):
    return [sys.executable, "-m", "scaling_grid.grid.cli", "run", str(spec), "--store", str(store), "--no-progress",
            "--no-memory-check", "--status-every", "0.2", *extra]


def _metrics(store):
    s = G.Store(str(store))
    return {cid: s.read_metrics(cid) for cid in s.cell_ids()}


@pytest.mark.slow
def test_a_packed_grid_sigtermed_and_resumed_equals_the_unpacked_grid(tmp_path):
    """8 cells (2 seeds x 2 lr x 2 budgets) in packs of 4; SIGTERM once a pack has checkpoints, exit
    143 with the pack's cells preempted; the relaunch finishes; every cell's curves equal the unpacked
    grid's, under the same cell ids."""
    data = tmp_path / "data"
    plain, packed = tmp_path / "plain.yaml", tmp_path / "packed.yaml"
    plain.write_text(_spec(data, None))
    packed.write_text(_spec(data, 4))
    p = subprocess.run(_cmd(plain, tmp_path / "ref"), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ref = _metrics(tmp_path / "ref")
    assert len(ref) == 8

    store = tmp_path / "store"
    proc = subprocess.Popen(_cmd(packed, store), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while not any(saved_steps(d) for d in (store / "checkpoints").glob("*")):
            assert proc.poll() is None and time.time() - t0 < 300, "the packed run ended before a checkpoint"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    states = {cid: G.Store(str(store)).status(cid)[0] for cid in ref}
    held = [s for s in states.values() if s["state"] == "preempted"]
    assert len(held) == 4 and all(len(s["pack"]) == 4 for s in held), states

    p = subprocess.run(_cmd(packed, store), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "in a pack of 4" in p.stdout
    got = _metrics(store)
    assert sorted(got) == sorted(ref)  # train.pack is not part of a cell's id
    for cid in ref:
        _close(ref[cid], got[cid], cid)


@pytest.mark.slow
def test_a_pack_on_an_fsdp_mesh_of_8_devices(tmp_path):
    """Two runs packed on fsdp 4 x data 2 (8 simulated devices): each run's losses equal its unpacked
    run's on the same mesh, the packed state is sharded as a run's with the pack axis whole, and a
    run's slice comes back laid out as the unpacked state."""
    script = f"""
        import dataclasses, json
        import jax, numpy as np
        from scaling_grid.trainer import config as C, loop, step, tokenstore
        from scaling_grid.trainer.metrics import TensorStoreSink, read_metrics
        from scaling_grid.trainer.model import make_arch
        from scaling_grid.trainer.sharding import make_mesh
        root = {str(tmp_path)!r}
        base = C.RunConfig(model=C.ModelConfig(width=32, depth=2, heads=2, seq_len=16),
                           data=C.DataConfig(root=root + "/data"), mesh=C.MeshConfig(data=2, fsdp=4),
                           train=C.TrainConfig(tokens=8 * 16 * 12, batch_size=8, steps_per_call=4, log_every=4,
                                               eval_every=8, eval_batches=1))
        cfgs = [base, dataclasses.replace(base, train=dataclasses.replace(base.train, seed=1, data_seed=1))]
        store = tokenstore.prepare(base.data, progress=False)
        for i, c in enumerate(cfgs):
            loop.train(c, TensorStoreSink(f"{{root}}/a{{i}}", c.steps), f"{{root}}/ca{{i}}", store=store)
        arch = make_arch(base.model, store.vocab_size)
        steps = step.build(arch, base.optim, mesh=make_mesh(base.mesh), pack=2)
        loop.train_pack([loop.Lane(c, TensorStoreSink(f"{{root}}/p{{i}}", c.steps), f"{{root}}/cp{{i}}")
                         for i, c in enumerate(cfgs)], store=store, steps=steps)
        diff = max(float(np.nanmax(np.abs(np.asarray(read_metrics(f"{{root}}/a{{i}}")[f])
                                          - np.asarray(read_metrics(f"{{root}}/p{{i}}")[f]))))
                   for i in range(2) for f in ("loss", "eval_loss"))
        state = steps.init(jax.random.split(jax.random.key(0), 2))
        kernel = state.params["blocks"]["mlp"]["up"]["kernel"]
        lane = steps.unstack(state, 0).params["blocks"]["mlp"]["up"]["kernel"]
        want = steps.lane.state_sharding.params["blocks"]["mlp"]["up"]["kernel"]
        print(json.dumps({{"diff": diff, "packed_spec": str(kernel.sharding.spec), "lane_spec": str(lane.sharding.spec),
                          "want_spec": str(want.spec), "shard_shape": list(kernel.addressable_shards[0].data.shape),
                          "shape": list(kernel.shape)}}))
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                       timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["diff"] < 1e-5, got
    assert got["lane_spec"] == got["want_spec"] and "fsdp" in got["want_spec"], got
    assert got["packed_spec"] == got["lane_spec"].replace("P(", "P(None, ", 1), got  # the pack axis whole
    assert got["shard_shape"][0] == 2 and got["shard_shape"] != got["shape"], got


@pytest.mark.slow
def test_the_memory_check_sees_a_whole_pack(runs):
    """The launcher's ahead-of-time memory check compiles a full pack of the largest shape: K runs
    need about K times the memory of one."""
    from scaling_grid.trainer.compile import SharedSteps, memory_need
    cfgs, store, *_ = runs
    shared = SharedSteps()
    one = memory_need(shared.lower(cfgs[0], store.vocab_size, TABLE)[0])
    four = memory_need(shared.lower(cfgs[0], store.vocab_size, TABLE, pack=4)[0])
    assert one and four and 3.5 * one < four < 4.5 * one, (one, four)


@pytest.mark.slow
def test_one_diverging_run_leaves_its_pack_going(runs, tmp_path):
    """A run whose lr makes it diverge is recorded as diverged at its first non-finite loss; the
    other runs of its pack train on and end as they do alone."""
    cfgs, store, alone, *_ = runs
    wild = dataclasses.replace(cfgs[1], optim=dataclasses.replace(cfgs[1].optim, lr=1e6))
    out = loop.train_pack(_lanes([cfgs[0], wild, cfgs[2]], tmp_path), store=store, table_len=TABLE)
    assert [r.status for r in out] == ["done", "diverged", "done"], out
    assert "not finite" in out[1].message
    bad = read_metrics(str(tmp_path / "m1"))["loss"]
    assert not np.isfinite(bad[out[1].step]) and np.isnan(bad[out[1].step + 1:]).all()
    for i in (0, 2):
        _close(alone[i], read_metrics(str(tmp_path / f"m{i}")), f"run {i}")


@pytest.mark.slow
def test_an_error_in_a_pack_fails_only_the_runs_it_stopped(tmp_path, monkeypatch):
    """A pack of 2 budgets: the shorter run is done at step 40; a checkpoint write then fails at step 64.
    The done cell stays done, the other is failed, and the next launch finishes it from step 48."""
    from scaling_grid.grid import launch
    from scaling_grid.trainer.checkpoint import Checkpointer
    spec = tmp_path / "p.yaml"
    spec.write_text(_spec(tmp_path / "data", 2, {"seed": [0], "lr": ["3e-3"], "tokens": [2560, 5120]}, ckpt_every=16))
    real = Checkpointer.save

    def save(self, step, state, meta):
        if step == 64:
            raise RuntimeError("disk on fire")
        return real(self, step, state, meta)
    monkeypatch.setattr(Checkpointer, "save", save)
    opts = launch.Options(store=str(tmp_path / "store"), memory_check=False, progress=False)
    assert launch.run(str(spec), opts) == launch.EXIT_FAILED
    st = {c["config"]["total_steps"]: c["status"] for c in G.Store(str(tmp_path / "store")).records()[0]}
    assert st[40]["state"] == "done" and st[40]["step"] == 40
    assert st[80]["state"] == "failed" and "disk on fire" in st[80]["message"]
    monkeypatch.setattr(Checkpointer, "save", real)
    assert launch.run(str(spec), opts) == launch.EXIT_OK
    st = {c["config"]["total_steps"]: c["status"] for c in G.Store(str(tmp_path / "store")).records()[0]}
    assert st[80]["state"] == "done" and st[80]["attempt"] == 2 and st[40]["attempt"] == 1


def test_train_pack_is_validated_and_left_out_of_records_at_its_default():
    with pytest.raises(C.ConfigError, match=r"train.pack=0: must be a positive integer"):
        configfile.load(None, ["train.pack=0"])
    assert "pack" not in C.RunConfig().to_dict()["train"]
    assert configfile.load(None, ["train.pack=8"]).to_dict()["train"]["pack"] == 8
    assert "pack" not in C.fingerprint(configfile.load(None, ["train.pack=8"]))["train"]  # resumes packed or not
