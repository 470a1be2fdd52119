"""Processes a test starts: a free local port for a coordinator or a server, and waiting for a group of
processes under one hard timeout (a hang fails the test; whatever still runs is killed)."""
from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    """(return code, output) of each process; any still running after ``timeout`` is killed."""
    out = []
    try:
        for p in procs:
            log, _ = p.communicate(timeout=timeout)
            out.append((p.returncode, log))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out
