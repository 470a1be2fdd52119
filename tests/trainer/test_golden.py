"""Golden values: the loss and gradient norm of a fixed tiny gpt2 and llama at their first step, and the
loss after one AdamW update, through the real compiled train step (init, model, loss, optimizer).

Any change to the init, the model's function, the loss or the optimizer moves these at the 1e-3 level;
float32 on another CPU's instruction set moves them at most at the 1e-6 level. If this fails after a
change that was meant to change the network or its training (a new init, a different norm, another
optimizer default), rerun the numbers with the code below, check that the change explains them, and
update GOLDEN in the same commit, saying why in its message. If the change was not meant to touch
training, the failure is a regression: find it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling_grid.trainer import config as C
from scaling_grid.trainer import step
from scaling_grid.trainer.model import make_arch

# variant: (loss at step 0, gradient norm at step 0, loss at step 1 after one update at lr 1e-3)
GOLDEN = {"gpt2": (5.572439193725586, 1.529862403869629, 5.467424392700195),
          "llama": (5.563548564910889, 1.0202761888504028, 5.493785858154297)}


@pytest.mark.parametrize("variant", sorted(GOLDEN))
def test_one_step_of_a_fixed_tiny_model_gives_its_golden_values(variant):
    optim = C.OptimConfig(lr=1e-3, warmup_steps=0)
    arch = make_arch(C.ModelConfig(variant=variant, width=32, depth=2, heads=2, seq_len=16), 256)
    steps = step.build(arch, optim)
    state = steps.init(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 4, 17)).astype(np.int32))
    lrs = jnp.asarray(step.lr_table(optim, 2))
    state, first = steps.train(state, x[:, :, :-1], x[:, :, 1:], lrs)
    state, second = steps.train(state, x[:, :, :-1], x[:, :, 1:], lrs)
    got = (float(first["loss"][0]), float(first["grad_norm"][0]), float(second["loss"][0]))
    assert got == pytest.approx(GOLDEN[variant], rel=1e-5), (
        f"{variant}: {got} != golden {GOLDEN[variant]}; see this file's docstring for what to do")
