"""Parametrizations: how init, forward multipliers and Adam's per-parameter constants scale with shape.

``model.param`` picks one:

- ``sp``: standard (GPT-2) parametrization, what the trainer always did. Every rule below returns
  today's value, and the model and optimizer take today's code paths: sp runs are bit-identical.
- ``mup``: the Maximal Update Parametrization for Adam (Yang et al. 2022, "Tensor Programs V",
  Table 3; the ``mup`` package's MuReadout and MuAdam), relative to a base width: a base lr tuned at
  one width transfers across widths. Depth is treated as sp does.
- ``completep``: muP plus depth-muP with alpha = 1 (Dey et al. 2025, "Don't be lazy: CompleteP
  enables compute-efficient deep transformers", Table 1, and the authors' reference implementation,
  nanoGPT-mup's ``completep`` branch): every residual branch is scaled by base_depth/depth, so the
  base lr also transfers across depths.

Each rule is a pure function of the Arch (duck-typed: ``param``, ``width``, ``depth``, ``heads``,
``base_width``, ``base_depth``, ``base_head_dim``). At the base shape (width = base_width, depth =
base_depth, head dim = base_head_dim) mup and completep equal sp exactly: every multiplier is 1.

Notation: m_N = width / base_width, m_L = depth / base_depth. "Hidden matrices" are the kernels
inside the blocks (qkv, proj, up, gate, down): both of their dimensions grow with width. The token
and position embeddings, the untied head, biases and norm scales have at most one such dimension
("vector-like" in muP's terms).
"""
from __future__ import annotations

import math
from typing import Any

ALPHA = 1.0  # CompleteP's depth exponent: branches scaled by m_L^-alpha; alpha = 1 is CompleteP proper


def width_mult(arch: Any) -> float:
    """m_N = width / base_width; 1 under sp."""
    return 1.0 if arch.param == "sp" else arch.width / arch.base_width


def depth_mult(arch: Any) -> float:
    """m_L = depth / base_depth under completep; 1 otherwise (sp and mup leave depth alone)."""
    return arch.depth / arch.base_depth if arch.param == "completep" else 1.0


# ---- init ---------------------------------------------------------------------------------------

def hidden_init_std(arch: Any, std: float) -> float:
    """Init std of the hidden matrices that read the residual stream (qkv, up, gate).
    muP: variance 1/fan_in, i.e. std * sqrt(base_width/width), so each output coordinate stays O(1)
    as width grows (TP V Table 3, "hidden weights: init var 1/fan_in")."""
    return std if arch.param == "sp" else std / math.sqrt(width_mult(arch))


def out_proj_init_std(arch: Any, std: float) -> float:
    """Init std of the matrices that write into the residual stream (attention proj, MLP down).
    sp: GPT-2's std / sqrt(2 depth), so the sum of 2*depth branches keeps its variance.
    mup: the same, times muP's sqrt(base_width/width) (width only; depth stays as in sp).
    completep: the depth factor is frozen at base_depth; depth is handled by the branch multiplier
    base_depth/depth instead (CompleteP Table 1: hidden init variance has no depth factor)."""
    if arch.param == "sp":
        return std / math.sqrt(2 * arch.depth)
    depth = arch.base_depth if arch.param == "completep" else arch.depth
    return std / math.sqrt(width_mult(arch)) / math.sqrt(2 * depth)


# ---- forward multipliers --------------------------------------------------------------------------

def attention_scale(arch: Any) -> float | None:
    """Multiplier of the q.k attention logits; None = the kernel's default 1/sqrt(head_dim) (sp).
    muP: 1/head_dim, since after training q and k are correlated and q.k grows like head_dim, not
    its square root (TP V, Sec. 4 / Table 3); written sqrt(base_head_dim)/head_dim so that it equals
    1/sqrt(head_dim) at the base shape. With head_dim fixed across widths it stays 1/sqrt(head_dim)."""
    if arch.param == "sp":
        return None
    K = arch.width // arch.heads
    base = arch.base_head_dim or K
    return math.sqrt(base) / K


def branch_multiplier(arch: Any) -> float:
    """Multiplier of every attention and MLP branch before it joins the residual stream.
    completep: m_L^-alpha = base_depth/depth (alpha = 1), so the residual stream's update summed
    over depth branches stays O(1) and every block keeps learning non-lazily (CompleteP Sec. 2, Table 1)."""
    return depth_mult(arch) ** -ALPHA


def output_multiplier(arch: Any) -> float:
    """Multiplier of the output logits, for the tied and the untied head alike.
    muP: base_width/width (MuReadout's 1/width_mult): the head's input is correlated with the
    head's update after training, so logits would grow like width without it (TP V Table 3,
    "output weights: multiplier 1/fan_in")."""
    return 1.0 / width_mult(arch)


# ---- optimizer constants per parameter ------------------------------------------------------------

def _keys(path: tuple[Any, ...]) -> list[str]:
    return [str(getattr(p, "key", getattr(p, "name", p))) for p in path]


def is_hidden_matrix(path: tuple[Any, ...]) -> bool:
    """A kernel inside the blocks (qkv, proj, up, gate, down), stacked over layers by nn.scan."""
    keys = _keys(path)
    return keys[0] == "blocks" and keys[-1] == "kernel"


def in_blocks(path: tuple[Any, ...]) -> bool:
    return _keys(path)[0] == "blocks"


def lr_multiplier(arch: Any, path: tuple[Any, ...]) -> float:
    """Adam lr of the parameter at ``path`` relative to the base lr.
    Hidden matrices: muP's 1/m_N (TP V Table 3, Adam: "hidden LR 1/fan_in"; MuAdam divides by
    width_mult) times CompleteP's m_L^(alpha-1) (= 1 at alpha = 1).
    Norm scales and biases inside the blocks: m_L^(alpha-1) (CompleteP Table 1; = 1 at alpha = 1).
    Embeddings, untied head, final norm: 1 (vector-like: Adam's update is already O(1) per
    coordinate; MuAdam leaves MuReadout's weight, with one finite dimension, at the base lr)."""
    depth = depth_mult(arch) ** (ALPHA - 1)
    if is_hidden_matrix(path):
        return depth / width_mult(arch)
    return depth if in_blocks(path) else 1.0


def wd_multiplier(arch: Any, path: tuple[Any, ...]) -> float:
    """Weight decay of the parameter at ``path`` (only matrices decay: step.decay_mask) relative to
    optim.weight_decay. AdamW's decay is multiplied by the parameter's lr, as in PyTorch's AdamW.
    completep: hidden matrices m_N * m_L^(1-alpha), so lr * decay per step is independent of width
    (CompleteP Table 1; the reference code's weight_decay / width_lr_scaling).
    mup: 1, as the mup package and the reference muP code (the effective decay follows the hidden lr)."""
    if arch.param == "completep" and is_hidden_matrix(path):
        return width_mult(arch) * depth_mult(arch) ** (1 - ALPHA)
    return 1.0


def adam_eps_multiplier(arch: Any) -> float:
    """Adam's epsilon relative to optim.eps, for every parameter.
    completep: 1/m_N * m_L^-alpha: gradients shrink like 1/width (muP's output multiplier) and
    1/depth (the branch multiplier), and eps must shrink with them or it would swallow the update of
    wide and deep models (CompleteP Table 1; the reference code scales the one eps of all groups).
    mup: 1, as the mup package (eps is assumed negligible)."""
    if arch.param != "completep":
        return 1.0
    return 1.0 / width_mult(arch) * depth_mult(arch) ** -ALPHA


def leaf_multipliers(arch: Any, params: Any, rule: Any) -> Any:
    """The pytree of per-leaf constants ``rule(arch, path)`` (Python floats) laid out as ``params``."""
    import jax
    return jax.tree_util.tree_map_with_path(lambda path, _: rule(arch, path), params)
