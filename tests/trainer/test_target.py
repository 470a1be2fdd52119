"""Compiling for accelerators that are not here (trainer/target.py, grid/aot.py): the real TPU compiler
(libtpu) and XLA's GPU compiler (the CUDA plugin and an H100 target config) on tiny models, no chip.
Each compile takes seconds; the `aot` marker lets the fast tier leave them out."""
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest
from tiny import tiny_spec

from scaling_grid.trainer import config as C
from scaling_grid.trainer.config import ConfigError
from scaling_grid.trainer.model import compute_dtype, flops_per_token, make_arch, non_embedding_formula, resolve_unroll
from scaling_grid.trainer.target import Target, _lower, compile_shape, parse_target, xla_flops_per_token

pytestmark = pytest.mark.aot
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def v5e():
    t = parse_target("tpu:v5e:2x2")
    return t, t.devices()


@pytest.fixture(scope="module")
def h100():
    t = parse_target("gpu:h100")
    return t, t.devices()


def _cfg(variant="gpt2", width=64, depth=2, heads=2, seq=128, batch=8, attention="auto", remat="none", unroll=0,
         mesh="data"):
    """A tiny run on all of the target's devices along one mesh axis (data or fsdp)."""
    return C.RunConfig(model=C.ModelConfig(variant=variant, width=width, depth=depth, heads=heads, seq_len=seq,
                                           attention=attention, remat=remat, unroll=unroll),
                       mesh=C.MeshConfig(**{"data": 1, "fsdp": 1, mesh: -1}),
                       train=C.TrainConfig(batch_size=batch, tokens=batch * seq * 10))


def test_targets_parse_and_bad_names_say_what_is_known():
    t = parse_target("tpu:v5e:2x4")
    assert (t.platform, t.chip, t.topology, t.hbm_bytes) == ("tpu", "v5e", "2x4", 16 * 2**30)
    assert parse_target("gpu:h100").hbm_bytes == 84942979072  # as the shipped target config states it
    assert parse_target("gpu:h100:8").topology == "8"
    for bad in ("tpu:v9:2x2", "tpu:v5e", "gpu:h100:0", "cpu", "gpu:rtx"):
        with pytest.raises(ConfigError, match="tpu:v5e:2x4"):
            parse_target(bad)


def test_a_missing_extra_is_named_with_its_install_line(monkeypatch):
    monkeypatch.setattr(Target, "extra_installed", property(lambda self: False))
    with pytest.raises(ConfigError, match=re.escape(".[aot]")):
        parse_target("tpu:v5e:2x2").devices()


@pytest.mark.parametrize("variant,mesh,attention,remat", [
    ("gpt2", "fsdp", "xla", "none"), ("llama", "fsdp", "splash", "full"),
    ("gpt2", "data", "splash", "none"), ("llama", "data", "xla", "full")])
def test_tpu_compiles_with_its_kernels_and_bf16_weight_collectives(v5e, variant, mesh, attention, remat):
    """Each of variant, mesh, kernel and remat in two cases. Under FSDP no state leaf over 1 KiB is held
    whole by every device, and weights travel in bf16 (the compute dtype), not float32."""
    target, devices = v5e
    cfg = _cfg(variant, attention=attention, remat=remat, mesh=mesh)
    r = compile_shape(cfg, 256, target, devices=devices, count_flops=False)
    assert r.fits and r.bytes_per_device and r.bytes_per_device < 2**30, r
    assert r.devices == 4 and r.mesh[mesh] == 4
    assert (r.attention_kernel_calls["splash"] > 0) == (attention == "splash"), r.attention_kernel_calls
    assert r.attention_kernel_calls["cudnn_fmha"] == 0
    if mesh == "fsdp":
        assert r.replicated_state_bytes == 0, r
        assert set(r.collectives["all-gather"]) == {"bf16"}, r.collectives
    else:  # data parallel: the state is replicated, gradients are all-reduced
        assert r.replicated_state_bytes > 0 and "all-gather" not in r.collectives, r
        assert r.collectives["all-reduce"], r.collectives


def test_auto_means_what_it_means_on_the_target(v5e, h100):
    """Compiled from this CPU host: auto picks XLA's attention, a rolled scan and bf16 on TPU, cuDNN on
    an H100; splash and cudnn are accepted for their chips wherever the process runs."""
    r = compile_shape(_cfg(), 256, v5e[0], devices=v5e[1], count_flops=False)
    assert r.attention == "xla"
    assert (resolve_unroll(0, 4, "tpu"), resolve_unroll(0, 4, "cuda"), resolve_unroll(0, 4, "cpu")) == (1, 1, 4)
    assert compute_dtype("auto", "tpu") == jnp.bfloat16 and compute_dtype("auto", "cpu") == jnp.float32
    lowered = _lower(_cfg(), 256, v5e[1], "tpu", 10, 0)[0].as_text()
    assert re.search(r"dot_general .*bf16", lowered)  # train.dtype auto: bf16 matmuls
    assert compile_shape(_cfg(attention="auto"), 256, h100[0], devices=h100[1]).attention == "cudnn"
    with pytest.raises(ConfigError, match="TPU only"):
        compile_shape(_cfg(attention="splash"), 256, h100[0], devices=h100[1])


@pytest.mark.parametrize("attention", ["xla", "cudnn"])
def test_h100_compiles_and_keeps_cudnn_fused_attention(h100, attention):
    target, devices = h100
    r = compile_shape(_cfg(attention=attention), 256, target, devices=devices)
    assert r.fits and 0 < r.bytes_per_device < r.hbm_bytes_per_device
    assert r.flops_per_token_xla is None  # XLA's GPU compiler gives no cost analysis for a target
    # one fused attention forward and one backward per compiled block body (the scan is rolled on GPU)
    assert r.attention_kernel_calls["cudnn_fmha"] == (2 if attention == "cudnn" else 0), r.attention_kernel_calls


def test_a_pack_is_k_times_the_flops_in_the_same_dots(v5e):
    """A pack of 4 compiles to the dots of one run, each batched over the pack, at 4x the FLOPs."""
    target, devices = v5e
    cfg = _cfg(seq=128)
    one = compile_shape(cfg, 256, target, devices=devices)
    four = compile_shape(cfg, 256, target, pack=4, devices=devices)
    assert four.flops_per_token_xla / one.flops_per_token_xla == pytest.approx(4, rel=0.01)
    dots = {}
    for pack in (0, 4):
        unrolled = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, unroll=2))
        low = _lower(unrolled, 256, devices, "tpu", 10, pack)[0].as_text()
        dots[pack] = re.findall(r"stablehlo.dot_general (.*)", low)
    assert len(dots[4]) == len(dots[0]) > 10
    assert all("batching_dims = [0" in d and re.search(r"-> tensor<4x", d) for d in dots[4]), dots[4][:3]


def test_xla_counts_the_flops_the_formula_says(v5e):
    """gpt2 width 512, depth 4 on an FSDP mesh, 32 sequences a step (Adam's per-step cost spread over
    enough tokens): XLA's count (depth 1 and 2 compiled data-parallel, extrapolated to 4) within 3%
    of 6N + 6Vm + 12lTm; the rest is norms, activations and the optimizer, which the formula leaves out.
    The count does not depend on the mesh: FSDP's windowed matmuls (loops XLA counts once) are avoided."""
    _, devices = v5e
    cfg = _cfg(width=512, heads=8, depth=4, seq=128, batch=32, mesh="fsdp")
    xla = xla_flops_per_token(cfg, 256, devices, "tpu")
    arch = make_arch(cfg.model, 256)
    formula = flops_per_token(arch, non_embedding_formula(arch))
    assert xla == pytest.approx(formula, rel=0.03) and xla > formula  # XLA sees more than the matmuls


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "scaling_grid.grid.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_compile_command_reports_fits_and_refusals(tmp_path):
    """A run config that fits (exit 0, JSON per shape) and one whose logits cannot fit 16 GiB per v5e
    device (exit 1, the compiler's RESOURCE_EXHAUSTED quoted); rows within 100 columns."""
    small = ["model.width=64", "model.depth=1", "model.heads=1", "model.seq_len=128", "train.batch_size=8",
             "mesh.data=1", "mesh.fsdp=-1"]
    p = _cli("compile", *small, "--target", "tpu:v5e:2x2", "--json", str(tmp_path / "c.json"))
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads((tmp_path / "c.json").read_text())
    assert len(got) == 1 and got[0]["fits"] and got[0]["target"] == "tpu:v5e:2x2" and got[0]["devices"] == 4
    for key in ("shape", "bytes_per_device", "hbm_bytes_per_device", "flops_per_token_xla",
                "flops_per_token_formula", "attention_kernel_calls", "collectives"):
        assert key in got[0]
    assert all(len(line) <= 100 for line in p.stdout.splitlines()), p.stdout
    huge = ["model.width=64", "model.depth=1", "model.heads=1", "model.seq_len=1024", "train.batch_size=512",
            "optim.warmup_steps=1", "data.tokenizer=gpt2", "mesh.data=-1"]
    p = _cli("compile", *huge, "--target", "tpu:v5e:2x2")
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    assert "RESOURCE_EXHAUSTED" in p.stdout and "NO" in p.stdout, p.stdout


def test_a_packed_spec_compiles_each_shape_once_with_its_full_pack(tmp_path):
    """A grid spec: cells that differ in seed and budget share one compiled step, packed as `run`
    packs them (train.pack 4 over 4 cells: one pack of 4); another width is another shape."""
    from scaling_grid.grid import aot
    spec = tmp_path / "p.yaml"
    spec.write_text(tiny_spec("p", {"width": [16, 32], "depth": [1], "seed": [0, 1], "tokens": [2560, 5120]},
                              root=None, optim={"lr": None}, train={"eval_batches": None}, eval_every=16, keep=None,
                              pack=4))
    configs, what = aot.configs_of(str(spec), [])
    assert len(configs) == 8 and what == "grid spec, 8 cells"
    shapes = aot.distinct_shapes(configs)
    assert [(c.model.width, pack, table) for c, _, table, pack in shapes] == [(16, 4, 80), (32, 4, 80)]
    with pytest.raises(ConfigError, match="overrides apply to a run config"):
        aot.configs_of(str(spec), ["model.width=64"])


@pytest.mark.slow
def test_dry_run_clears_the_demo_grid_for_a_tpu(tmp_path):
    p = _cli("run", "configs/demo.yaml", "--dry-run", "--target", "tpu:v5e:2x2", "--store", str(tmp_path / "s"))
    assert p.returncode == 0, p.stderr[-3000:]
    head = next(line for line in p.stdout.splitlines() if line.startswith("target tpu:v5e:2x2"))
    assert "every one fits" in head and "shape(s)" in head, head
