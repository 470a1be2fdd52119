"""Checkpoints with orbax: save policy (every k steps, every t minutes, on demand), restore with fallback.

A checkpoint holds the train state (params, optimizer state, step) and a small JSON record (the step,
the run's config fingerprint). The data order needs no state: the batch at step s is a function of
(data_seed, s). orbax writes each step into a temporary directory and renames it when complete, so a
process killed mid-save leaves no step that looks complete (in a bucket, which has no rename, a step is
complete once its commit_success.txt is written).

Checkpoint folders may be local paths, file:// or gs:// URLs: orbax takes an ``etils.epath.Path``
(:func:`.paths.path_of`), and the folders moved aside here move with its rename. In a bucket every
orbax call is bounded (:func:`.bucket.bucket_call`): gcsfs gives up after about a minute of retries, but
orbax's array writes go through TensorStore, which retries for many minutes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orbax.checkpoint as ocp

from .bucket import BucketTimeout, bucket_call
from .paths import is_remote, path_of
from .runtime import barrier, is_writer

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | os.PathLike[str], keep: int, every_steps: int, every_minutes: float,
                 keep_steps: Sequence[int] = (), warn: Callable[[str], None] = print):
        """keep_steps: steps always saved and never deleted (branch points of WSD cooldowns)."""
        self.directory = path_of(directory)
        self.url = str(self.directory)
        self.every_steps, self.every_s = every_steps, every_minutes * 60.0
        self.keep_steps = frozenset(keep_steps)
        self.warn = warn
        stale = bucket_call(lambda: sorted(p.name for p in self.directory.glob("*.orbax-checkpoint-tmp*"))
                            if self.directory.exists() else [], self.url)
        if stale:
            self.warn(f"checkpoint: ignoring partial save(s) {stale} left by an interrupted process")
        self.manager = bucket_call(lambda: ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True, cleanup_tmp_directories=True, enable_async_checkpointing=True,
                # Its own barrier names: orbax names a save's cross-process barriers by step, so two
                # managers saving one step at once (the runs of a pack) would meet in each other's
                # barriers and time out on many processes. Every process names the folder alike.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix="ckpt-" + hashlib.blake2b(str(self.directory).encode(),
                                                                      digest_size=6).hexdigest()),
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy([
                    ocp.checkpoint_managers.LatestN(keep),
                    ocp.checkpoint_managers.CustomSteps(sorted(self.keep_steps))])),
        ), self.url)
        self.t_last = time.monotonic()

    def due(self, step: int) -> bool:
        """Interval policy: every k steps or every t minutes, whichever comes first."""
        return (step % self.every_steps == 0 or step in self.keep_steps
                or time.monotonic() - self.t_last >= self.every_s)

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start an asynchronous save of `state` at `step` (a no-op if that step is already saved)."""
        if step in bucket_call(self.manager.all_steps, self.url):
            return
        bucket_call(lambda: self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True), self.url)
        self.t_last = time.monotonic()

    def wait(self) -> None:
        """Block until pending saves are committed; surfaces async save errors."""
        bucket_call(self.manager.wait_until_finished, self.url)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        out = bucket_call(lambda: self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())), self.url)
        return out.state, dict(out.meta)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """Restore the newest readable checkpoint onto the shardings of `abstract_state`.

        A checkpoint that fails to restore (corrupt or truncated files) is reported and skipped in
        favour of the one before it. Returns None when no checkpoint is readable."""
        steps = sorted(bucket_call(self.manager.all_steps, self.url), reverse=True)
        bad: list[int] = []
        out = None
        for i, step in enumerate(steps):
            try:
                out = self.restore(step, abstract_state)
                break
            except BucketTimeout:  # the bucket is down, not the checkpoint
                raise
            except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
                nxt = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "starting from scratch"
                self.warn(f"checkpoint at step {step} is unreadable ({type(e).__name__}: {str(e)[:200]}); {nxt}")
                bad.append(step)
        if bad:  # out of the way, so the retrained steps are saved anew (a save skips an existing step)
            if is_writer():  # one process moves the shared folders; the others wait for it
                set_aside(self.directory, bad)
            barrier("unreadable checkpoints set aside")
            self.manager.reload()
            self.warn(f"moved the unreadable checkpoint(s) {bad} to {aside(self.directory)}")
        return out

    def close(self) -> None:
        bucket_call(self.manager.wait_until_finished, self.url)
        bucket_call(self.manager.close, self.url)


class UnreadableCheckpoint(RuntimeError):
    """Another run's checkpoint that exists but does not restore (corrupt or truncated files)."""

    def __init__(self, directory: str | os.PathLike[str], step: int, cause: Exception):
        super().__init__(f"checkpoint {directory}/{step} is unreadable ({type(cause).__name__}: {str(cause)[:200]})")
        self.directory, self.step = path_of(directory), step


def restore_from(directory: str | os.PathLike[str], step: int, abstract_state: Any) -> Any:
    """The train state saved at `step` in another run's checkpoint directory (read-only)."""
    manager = ocp.CheckpointManager(path_of(directory),
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                                         save_interval_steps=0))
    try:
        if step not in manager.all_steps():
            raise FileNotFoundError(f"no checkpoint at step {step} in {directory} "
                                    f"(it has {sorted(manager.all_steps())})")
        try:
            out = bucket_call(lambda: manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state))), str(directory))
        except BucketTimeout:  # the bucket is down, not the checkpoint
            raise
        except Exception as e:  # noqa: BLE001 - any failure to read: the caller decides what to rerun
            raise UnreadableCheckpoint(directory, step, e) from e
        return out.state
    finally:
        manager.close()


def saved_steps(directory: str | os.PathLike[str]) -> list[int]:
    """The complete checkpoint steps in a folder, as orbax lists them (in a bucket, a step being written
    has no commit_success.txt yet and is not listed); [] for a folder that does not exist."""
    d = path_of(directory)
    return bucket_call(lambda: sorted(ocp.path.step.checkpoint_steps(d)) if d.exists() else [], str(d))


def aside(directory: str | os.PathLike[str]) -> Any:
    """Where `set_aside` keeps a run's unreadable checkpoints: ``<directory>.unreadable/`` (a path_of path)."""
    d = path_of(directory)
    return d.parent / (d.name + ".unreadable")


def set_aside(directory: str | os.PathLike[str], steps: Iterable[int]) -> Any:
    """Move checkpoint steps into ``<directory>.unreadable/`` (kept for inspection, never listed as
    steps), so the run resumes from an earlier one and saves these steps anew. Returns the folder."""
    folder = path_of(directory)
    dest = aside(folder)
    dest.mkdir(exist_ok=True)
    if is_remote(str(dest)):  # a bucket has no empty folders, and epath's rename wants its target's to exist
        (dest / "README.txt").write_text("checkpoints that did not restore, moved here by scaling-grid\n")
    for s in steps:
        target, n = dest / str(s), 1
        while target.exists():
            target, n = dest / f"{s}.{n}", n + 1
        (folder / str(s)).rename(target)
    return dest
