"""trainer/bucket.py: a wait on a bucket ends within the bound, or within seconds of a SIGTERM when the
bucket does not answer; local paths are waited on as before. Futures and calls that never finish stand
in for a bucket that stopped answering (the real outage: tests/system/test_bucket_outage.py)."""
import threading
import time

import pytest

from scaling_grid.trainer import bucket as B

URL = "gs://bkt/store"


class Never:
    """A TensorStore-like future that never completes."""

    def result(self, timeout: float | None = None) -> None:
        time.sleep(timeout if timeout is not None else 3600)
        raise TimeoutError


class Ready:
    def result(self, timeout: float | None = None) -> str:
        return "value"


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test starts with no failure recorded and no SIGTERM seen."""
    monkeypatch.setattr(B, "_gave_up", [])
    monkeypatch.setattr(B, "_sigterm", threading.Event())
    monkeypatch.setenv(B.TIMEOUT_ENV, "0.6")


def test_a_bucket_that_does_not_answer_fails_within_the_bound_and_then_at_once():
    t0 = time.monotonic()
    with pytest.raises(B.BucketTimeout) as e:
        B.bucket_result(Never(), URL)
    assert 0.6 <= time.monotonic() - t0 < 2
    assert str(e.value).startswith(f"{URL}: the bucket did not answer within 0.6 s ({B.TIMEOUT_ENV}=S")
    assert not e.value.sigterm and B.gave_up() is e.value
    t0 = time.monotonic()
    with pytest.raises(B.BucketTimeout):  # the process is on its way out: no second full wait
        B.bucket_call(lambda: time.sleep(3600), URL)
    assert time.monotonic() - t0 < 0.1


def test_local_paths_and_answers_are_waited_on_as_before():
    assert B.bucket_result(Ready(), "/tmp/x") == "value" == B.bucket_result(Ready(), URL)
    assert B.bucket_result(Ready(), "file:///tmp/x") == "value"
    assert B.bucket_call(lambda: 3, URL) == 3
    with pytest.raises(KeyError):  # the call's own error, in the caller's thread
        B.bucket_call(lambda: {}["k"], URL)
    assert B.gave_up() is None


def test_a_sigterm_ends_the_wait_once_the_bucket_does_not_answer_a_read(monkeypatch):
    monkeypatch.setenv(B.TIMEOUT_ENV, "60")
    monkeypatch.setattr(B, "GRACE_S", 0.3)
    asked = []
    monkeypatch.setattr(B, "_answers", lambda url: asked.append(url) or False)
    threading.Timer(0.2, B.sigterm_received).start()
    t0 = time.monotonic()
    with pytest.raises(B.BucketTimeout) as e:
        B.bucket_call(lambda: time.sleep(3600), URL)
    assert time.monotonic() - t0 < 2 and asked == [URL]
    assert e.value.sigterm and "stopped by SIGTERM while the bucket did not answer" in str(e.value)


def test_a_sigterm_lets_a_wait_on_a_bucket_that_answers_finish(monkeypatch):
    """A slow save to a live bucket (the preemption checkpoint) is not abandoned."""
    monkeypatch.setattr(B, "GRACE_S", 0.1)
    monkeypatch.setattr(B, "_answers", lambda url: True)
    B.sigterm_received()
    assert B.bucket_call(lambda: time.sleep(0.5) or "saved", URL) == "saved"
