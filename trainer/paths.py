"""Paths that may name a bucket: which schemes work, how each library is handed one, and the checks
that run before any compute.

Every place where a user says where things go (the grid store, ``--checkpoints``, ``data.root``,
``train``'s ``out_dir``, ``export --out``, ``report --out``, the compile cache) takes a local path, a
``file://`` URL or a ``gs://`` URL. Local paths and ``file://`` URLs become absolute local paths
(``pathlib``, as before buckets were supported). A ``gs://`` URL stays a URL all the way down:
:func:`path_of` gives an ``etils.epath.Path`` for files and folders (orbax's checkpoints,
``config.yaml``, reports, JAX's compile cache; gcsfs does the I/O when TensorFlow is absent) and
:func:`kvstore` a TensorStore kvstore for arrays and conditional writes. Never ``pathlib`` on such a
path: ``Path("gs://b/x").absolute()`` is ``<cwd>/gs:/b/x``, a local folder.

Other schemes (``s3://``, ``memory://``, ...) are refused by name: orbax would need another fsspec
backend for them, and only ``gs://`` (through a local GCS emulator) and ``file://`` are tested.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import uuid
from typing import Any

from .bucket import TIMEOUT_ENV, bucket_result, timeout_s
from .config import ConfigError

SCHEMES = ("gs", "file")
NO_VALUE = b"\x02"  # TensorStore's storage generation of a missing key: `if_equal=NO_VALUE` writes only if absent
GCS_INSTALL = 'pip install "scaling-grid[gcs]"'
_REACHED: set[tuple[str, bool]] = set()  # (URL, written) probed in this process: a grid's cells share a data.root


def scheme_of(path: str | os.PathLike[str]) -> str | None:
    """'gs' for gs://b/x, 'file' for file:///x, None for a plain path."""
    s = os.fspath(path)
    i = s.find("://")
    return s[:i] if i > 0 else None


def is_url(path: str | os.PathLike[str]) -> bool:
    return scheme_of(path) is not None


def is_remote(path: str | os.PathLike[str]) -> bool:
    """A URL other than file:// (a bucket)."""
    return scheme_of(path) not in (None, "file")


def check_scheme(name: str, path: str | os.PathLike[str]) -> None:
    """ConfigError naming the field for a URL scheme this tool does not handle."""
    s = scheme_of(path)
    if s is not None and s not in SCHEMES:
        raise ConfigError(f"{name}={os.fspath(path)!r}: {s}:// is not supported; use a local path, a file:// URL "
                          "or a gs:// URL")


def require_local(name: str, path: str | None) -> str | None:
    """The local path of a field that must be local (file:// is accepted); ConfigError for a bucket URL."""
    if path is None:
        return None
    if is_remote(path):
        raise ConfigError(f"{name}={path!r}: must be a local folder (a bucket URL would become a local folder "
                          f"named '{scheme_of(path)}:')")
    return local(path)


def local(path: str | os.PathLike[str]) -> str:
    """The absolute local path of a plain path or a file:// URL."""
    s = os.fspath(path)
    s = s.removeprefix("file://")
    return os.path.abspath(os.path.expanduser(s))


def join(path: str | os.PathLike[str], *parts: str) -> str:
    """`path/part/...` as a string: a URL stays a URL, a local path (or file:// URL) becomes absolute."""
    s = os.fspath(path)
    base = s.rstrip("/") if is_remote(s) else local(s)
    return "/".join([base, *parts])


def name_of(path: str | os.PathLike[str]) -> str:
    """The last component of a path or URL."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def path_of(path: str | os.PathLike[str]) -> Any:
    """A path object with pathlib's interface: an absolute ``pathlib.Path`` for a local path or a file://
    URL, an ``etils.epath.Path`` for a gs:// URL (which stays a bucket path; orbax takes either).
    (Typed Any: etils ships no type information.)"""
    s = os.fspath(path)
    check_scheme("path", s)
    if is_remote(s):
        from etils import epath
        _gcsfs_ready(s)
        return epath.Path(s)
    return pathlib.Path(local(s))


def rmtree(path: Any) -> None:
    """Remove a folder and everything in it, local (pathlib) or in a bucket (epath)."""
    if isinstance(path, pathlib.Path):
        shutil.rmtree(path)
    else:
        path.rmtree()


def kvstore(path: str | os.PathLike[str]) -> str | dict[str, Any]:
    """A TensorStore kvstore whose keys are inside the folder `path`."""
    s = os.fspath(path)
    check_scheme("path", s)
    if is_remote(s):
        return s.rstrip("/") + "/"
    return {"driver": "file", "path": local(s) + "/"}


def write_if_absent(folder: str | os.PathLike[str], key: str, value: bytes) -> bool:
    """Write `folder/key` only if it does not exist (a conditional write: of two writers exactly one
    wins, on local disks and on GCS). Returns whether this call wrote it."""
    import tensorstore as ts
    kv = bucket_result(ts.KvStore.open(kvstore(folder)), folder)
    return bool(bucket_result(kv.write(key, value, if_equal=NO_VALUE), folder).generation)


def read_bytes(folder: str | os.PathLike[str], key: str) -> bytes | None:
    """`folder/key`, or None where it does not exist."""
    import tensorstore as ts
    r = bucket_result(bucket_result(ts.KvStore.open(kvstore(folder)), folder).read(key), folder)
    return r.value if r.state == "value" else None


def _gcsfs_ready(path: str, name: str | None = None) -> None:
    """epath reaches gs:// through TensorFlow's gfile or, without TensorFlow, gcsfs: one must be there."""
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        import importlib.util
        if importlib.util.find_spec("tensorflow") is None:  # not imported: it takes seconds
            what = f"{name}={path!r}" if name else repr(path)
            raise ConfigError(f"{what}: gs:// paths need gcsfs, which is not installed: {GCS_INSTALL}") from None
    import fsspec.config
    # gcsfs caches folder listings for the life of the process; orbax and TensorStore write objects behind
    # its back (and other hosts do), so a cached listing would hide new checkpoint steps.
    fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


def check_writable(name: str, url: str, timeout: float | None = None) -> None:
    """Before any compute: a bucket URL is reachable and writable there, proved by writing and deleting
    a probe object. ConfigError naming the field otherwise (also for an unsupported scheme, or gcsfs
    missing). A local path or file:// URL is left to the caller's local checks."""
    check_scheme(name, url)
    if is_remote(url):
        _gcsfs_ready(url, name)
        _probe(name, url, True, timeout)


def check_readable(name: str, url: str, timeout: float | None = None) -> None:
    """A bucket URL answers a read (TensorStore would retry for ever where there is no network or no
    credentials; a missing bucket reads as empty). Needs no gcsfs: reading a store is TensorStore's."""
    check_scheme(name, url)
    if is_remote(url):
        _probe(name, url, False, timeout)


def _probe(name: str, url: str, write: bool, timeout: float | None) -> None:
    where = (url.rstrip("/"), write)
    if where in _REACHED or (where[0], True) in _REACHED:
        return
    import tensorstore as ts
    # The same bound as every later bucket operation (trainer/bucket.py); TensorStore keeps retrying for
    # many minutes where there is no network or no credentials.
    wait = timeout if timeout is not None else timeout_s()
    probe = f".scaling-grid-probe-{uuid.uuid4().hex}"
    try:
        kv = ts.KvStore.open(kvstore(url)).result(timeout=wait)
        if write:
            kv.write(probe, b"").result(timeout=wait)
            kv.delete_range(ts.KvStore.KeyRange(probe, probe + "\0")).result(timeout=wait)
        else:
            kv.read(probe).result(timeout=wait)
    except TimeoutError:
        raise ConfigError(f"{name}={url!r}: the bucket did not answer within {wait:g} s; check the bucket name, "
                          "the network and the credentials (GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth "
                          f"application-default login`); {TIMEOUT_ENV}=S sets this wait") from None
    except ValueError as e:  # TensorStore's errors: NOT_FOUND (no such bucket), PERMISSION_DENIED, ...
        code = str(e).split(":", 1)[0]
        hint = {"NOT_FOUND": "no such bucket?", "PERMISSION_DENIED": "no permission there?"}.get(code, "")
        first = str(e).split(" [", 1)[0][:200]
        what = "write" if write else "read"
        raise ConfigError(f"{name}={url!r}: cannot {what} there ({first}{'; ' + hint if hint else ''})") from None
    _REACHED.add(where)


def upload_tree(local_dir: str | os.PathLike[str], url: str) -> None:
    """Copy every file under a local folder to the same relative paths under a bucket URL."""
    dest = path_of(url)
    for root, _, files in os.walk(local_dir):
        for f in files:
            src = os.path.join(root, f)
            rel = os.path.relpath(src, local_dir)
            with open(src, "rb") as fh:
                (dest / rel).write_bytes(fh.read())
