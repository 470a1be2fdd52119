"""Each config field declares its role (trainer/config.py ROLES); the cell id, the resume fingerprint,
the pack key and the compiled step's key are derived from the roles. These tests hold the roles to
what the code does with the fields, so a wrong role fails here rather than as a changed cell id or a
resume onto the wrong state."""
import dataclasses

import numpy as np
import pytest

from scaling_grid.trainer import config as C
from scaling_grid.trainer.compile import shape_key
from scaling_grid.trainer.step import lr_table

# A different valid value for each string field (numbers and flags are perturbed arithmetically).
_OTHER_STR = {"variant": "llama", "attention": "xla", "remat": "full", "param": "mup", "source": "text",
              "documents": "lines", "text_key": "body", "hf_config": "sample-100BT", "tokenizer": "gpt2",
              "root": "elsewhere", "schedule": "wsd", "dtype": "float32", "out_dir": "runs/elsewhere"}


def _other(name: str, value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 2 if value < 1 else value * 2 + 1
    if isinstance(value, float):
        return value * 0.5 + 0.013
    if isinstance(value, tuple):
        return (*value, "more.txt")
    return _OTHER_STR[name]


def _all_fields():
    """(section or None, field) for every leaf field of a RunConfig."""
    for f in dataclasses.fields(C.RunConfig):
        if f.name in C.SECTIONS:
            yield from ((f.name, g) for g in dataclasses.fields(C.SECTIONS[f.name]))
        else:
            yield None, f


FIELDS = [(s, f.name) for s, f in _all_fields()]


def _changed(cfg: C.RunConfig, section, name) -> C.RunConfig:
    if section is None:
        return dataclasses.replace(cfg, **{name: _other(name, getattr(cfg, name))})
    sect = getattr(cfg, section)
    return dataclasses.replace(cfg, **{section: dataclasses.replace(sect, **{name: _other(name, getattr(sect, name))})})


def test_every_field_has_a_known_role_and_a_meaning():
    for _, f in _all_fields():
        assert f.metadata["role"] in C.ROLES and f.metadata["help"], f.name


@pytest.mark.parametrize("section,name", FIELDS, ids=[f"{s}.{n}" if s else n for s, n in FIELDS])
def test_role_decides_cell_id_fingerprint_and_pack(section, name):
    """The derivation: a field is in the id, the fingerprint and the pack key exactly as its role says
    (e.g. no cadence field changes a cell id, every curve field changes the fingerprint). The values
    themselves are held by the pinned cell ids of tests/grid/test_spec.py."""
    base = C.RunConfig()
    changed = _changed(base, section, name)
    in_id, in_fingerprint, differs_in_pack = C.ROLES[C.role_of(section, name)]
    assert (C.identity(changed) != C.identity(base)) == in_id
    assert (C.fingerprint(changed) != C.fingerprint(base)) == in_fingerprint
    assert (C.pack_key(changed) == C.pack_key(base)) == differs_in_pack


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(C.OptimConfig)])
def test_exactly_the_schedule_fields_reach_the_lr_table_and_leave_the_compiled_step(name):
    """A schedule field is read into the lr table (so runs differing in it can share a compiled step);
    a field that is not, is part of the step's key (a forgotten one costs a compile, never a wrong share)."""
    steps = 100
    changes_table = False
    for schedule in ("cosine", "wsd"):
        base = C.OptimConfig(schedule=schedule, warmup_steps=10)
        if name == "schedule":
            changed = dataclasses.replace(base, schedule="constant")
        else:
            changed = dataclasses.replace(base, **{name: _other(name, getattr(base, name))})
        changes_table |= not np.array_equal(lr_table(base, steps), lr_table(changed, steps))
        keys = [shape_key(C.RunConfig(optim=o), 256)[1] for o in (base, changed)]
        assert (keys[0] == keys[1]) == (C.role_of("optim", name) == "schedule"), name
    assert changes_table == (C.role_of("optim", name) == "schedule"), name


def test_late_fields_are_left_out_at_their_defaults_and_the_mesh_whole():
    d = C.RunConfig().to_dict()
    assert "mesh" not in d and "pack" not in d["train"] and "attention" not in d["model"]
    meshed = C.RunConfig(mesh=C.MeshConfig(fsdp=2))
    assert meshed.to_dict()["mesh"] == {"data": -1, "fsdp": 2, "tensor": 1}  # written whole, as before
    assert "mesh" not in C.identity(meshed) and "mesh" not in C.fingerprint(meshed)
