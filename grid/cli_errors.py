"""What `scaling-grid` does with errors besides its own messages: a full disk found anywhere in an
exception's chain, and the libraries' echoes of an error already reported kept quiet."""
from __future__ import annotations

import errno
import logging
import os
import re
import sys
from typing import Any

from scaling_grid import trainer as T

from .exits import EXIT_FAILED, EXIT_PREEMPTED


def disk_full(e: BaseException | None) -> str | None:
    """The path of a 'no space left' error anywhere in an exception's chain (orbax and TensorStore
    wrap the OSError in their own exceptions), else None."""
    seen, found = set(), None
    while e is not None and id(e) not in seen:  # prefer an error that names the path
        seen.add(id(e))
        path = None
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            path = e.filename or "?"
        elif "No space left on device" in str(e):
            m = re.search(r'"(/[^"]+)"', str(e))
            path = m.group(1) if m else "?"
        if path not in (None, "?"):
            return path
        found = found or path
        e = e.__cause__ or e.__context__
    return found


def bucket_down(command: str, e: BaseException) -> None:
    """If a bucket stopped answering (trainer/bucket.py): one line naming its URL, then exit at once
    with EXIT_FAILED, or EXIT_PREEMPTED where a SIGTERM ended the wait. Nothing more can be recorded
    there, and threads still blocked in the bucket's clients (orbax's, TensorStore's) cannot be joined,
    so the process ends without the interpreter's shutdown (os._exit) once the line is out."""
    gone = T.gave_up()
    if gone is None:
        return
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen and not isinstance(cause, T.BucketTimeout):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    why = cause if isinstance(cause, T.BucketTimeout) else gone
    print(f"scaling-grid {command}: error: {why}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED if why.sigterm else EXIT_FAILED)


def _one_line_library_errors(record: logging.LogRecord) -> bool:
    """orbax logs a full traceback from its save thread before the same error reaches us (hundreds of
    lines for a full disk); the command's own message says what happened, so keep one line, and drop
    asyncio's exit-time echoes of orbax's tasks that failed with it ('... was never retrieved')."""
    record.exc_info, record.exc_text = None, None
    return not (record.name == "asyncio" and "exception was never retrieved" in str(record.msg))


def _quiet_closed_loop_callbacks() -> None:
    """TensorStore's callbacks hand orbax's results to an asyncio loop that a failed save (or a
    restore that fell back) has already closed; each prints a 'RuntimeError: Event loop is closed'
    traceback (as an 'unraisable' exception), dozens after one failure. The failure itself is reported (or
    was harmless); these echoes are dropped."""
    def closed_loop(value: BaseException | None) -> bool:
        return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
    default_except, default_unraisable = sys.excepthook, sys.unraisablehook

    def except_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not closed_loop(value):
            default_except(kind, value, tb)

    def unraisable_hook(u: Any) -> None:  # TensorStore's callbacks report here, as 'unraisable'
        if not closed_loop(u.exc_value):
            default_unraisable(u)
    sys.excepthook, sys.unraisablehook = except_hook, unraisable_hook


def quiet_library_echoes() -> None:
    """orbax's, gcsfs's and asyncio's logged tracebacks kept to one line (gcsfs logs each request that ran
    out of retries, with its traceback, before orbax reports it), and the closed-loop callbacks dropped."""
    for name in ("absl", "asyncio", "gcsfs"):
        logging.getLogger(name).addFilter(_one_line_library_errors)
    _quiet_closed_loop_callbacks()
