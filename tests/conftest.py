"""Test session setup: offline Hugging Face, a persistent JAX compilation cache shared with the
subprocesses that tests start (kill-and-resume), and a small disk for full-disk tests."""
import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tiny

_CACHE = Path(__file__).resolve().parent.parent / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (a disk that fills up), unmounted afterwards."""
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")  # CI and the dev machines run as root
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)])


@pytest.fixture
def tiny_spec() -> Callable[..., str]:
    """tests/tiny.py's grid spec builder, for tests that take their helpers as fixtures."""
    return tiny.tiny_spec
