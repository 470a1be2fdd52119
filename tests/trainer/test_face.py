"""The trainer's face: every name it lists resolves, and a command that only reads a store never
imports JAX or orbax (the face resolves names on first use)."""
import subprocess
import sys

import scaling_grid.trainer as T


def test_every_name_of_the_face_resolves_to_its_module():
    for name in T.__all__:
        assert getattr(T, name) is getattr(__import__(f"scaling_grid.trainer.{T._ORIGIN[name]}",
                                                      fromlist=[name]), name), name


def test_reading_commands_do_not_import_jax(tmp_path):
    code = ("import sys; from scaling_grid.grid import cli; "
            f"rc = cli.main(['status', {str(tmp_path)!r}]); "  # not a store: exit 2, through the store's code
            "print(rc, any(m == 'jax' or m.startswith(('jax.', 'orbax')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "2 False", out.stdout + out.stderr
