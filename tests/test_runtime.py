"""The worker runtime, with toy models in real processes (no mocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

from modelmora import (
    MemoryLimitExceeded,
    ModelLoadError,
    ModelSpec,
    RemoteTraceback,
    ResultNotPicklable,
    Worker,
    WorkerCrashed,
    WorkerError,
    WorkerStopped,
    WorkerTimeout,
)
from modelmora.runtime.memory import TreeSampler, process_rss_mb
from modelmora.runtime.protocol import SHM_DIR, Call, discard, encode
from modelmora.runtime.spawn import server_env


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


def test_call_round_trip_and_verified_release():
    worker = Worker("toy").start()
    pid = worker.pid
    assert pid != os.getpid() and worker.alive
    assert worker.call([1, "two", {"op": "echo", "value": 3}]) == [1, "two", 3]
    assert worker.call([{"op": "pid"}]) == [pid]
    assert worker.memory is not None and worker.memory.peak_rss_mb > 5
    report = worker.stop()
    assert report.released and report.stage == "graceful" and report.exitcode == 0
    assert report.pids == [pid] and 0 <= report.release_s < 5
    assert gone(pid)
    with pytest.raises(WorkerStopped):
        worker.call([1])


def test_load_failure_raises_with_child_traceback():
    with pytest.raises(ModelLoadError, match="no weights here") as info:
        Worker("toy:load_error=no weights here").start()
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "RuntimeError: no weights here" in cause.tb and "toy.py" in cause.tb


def test_unknown_adapter_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown adapter kind 'nope'.*toy"):
        ModelSpec("nope")
    with pytest.raises(ModelLoadError, match="ModuleNotFoundError"):
        Worker(ModelSpec("no_such_pkg.mod:Model")).start()


def test_exit_during_load_is_a_crash():
    with pytest.raises(WorkerCrashed, match="exited with code 7") as info:
        Worker("toy:load_exit=7").start()
    assert info.value.exitcode == 7


def test_load_timeout_kills_the_child():
    worker = Worker("toy:load_s=30", load_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(WorkerTimeout, match="during loading"):
        worker.start()
    assert time.monotonic() - t0 < 5
    assert not worker.alive


def test_remote_exception_keeps_type_and_traceback_and_worker_survives():
    with Worker("toy") as worker:
        with pytest.raises(ValueError, match="bad input") as info:
            worker.call([{"op": "raise", "message": "bad input"}])
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "_one" in info.value.__cause__.tb
        assert worker.call(["still alive"]) == ["still alive"]


def test_unpicklable_result_is_a_clear_error_not_a_hang():
    with Worker("toy") as worker:
        with pytest.raises(ResultNotPicklable, match=r"cannot be pickled.*lock"):
            worker.call([{"op": "unpicklable"}], timeout=10)
        assert worker.call([5]) == [5]


def test_unpicklable_input_is_refused_in_the_parent():
    with Worker("toy") as worker:
        pid = worker.pid
        with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object") as info:
            worker.call([threading.Lock()])
        assert not isinstance(info.value, WorkerError)  # pickle's own error, raised here
        assert info.value.__cause__ is None  # no remote traceback: the child never saw it
        assert worker.call([1]) == [1] and worker.pid == pid


@pytest.mark.parametrize(
    ("op", "pattern", "code"),
    [
        ({"op": "exit", "code": 3}, "exited with code 3", 3),
        ({"op": "segfault"}, "SIGSEGV", -signal.SIGSEGV),
    ],
)
def test_crash_during_call(op, pattern, code):
    worker = Worker("toy").start()
    with pytest.raises(WorkerCrashed, match=pattern) as info:
        worker.call([op], timeout=30)
    assert info.value.exitcode == code
    assert not worker.alive
    with pytest.raises(WorkerStopped):
        worker.call([1])


def test_sigkill_from_outside_is_noticed_at_once():
    worker = Worker("toy").start()
    pid = worker.pid
    assert pid is not None
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(WorkerCrashed, match=r"SIGKILL.*OOM") as info:
        worker.call([{"op": "hang"}])  # no timeout: only the sentinel can end this
    assert time.monotonic() - t0 < 2.0
    assert info.value.exitcode == -signal.SIGKILL


def test_call_timeout_kills_the_child():
    worker = Worker("toy").start()
    pid = worker.pid
    with pytest.raises(WorkerTimeout, match=r"within 0\.5 s"):
        worker.call([{"op": "hang"}], timeout=0.5)
    assert wait_gone(pid)


def test_memory_cap_kills_and_names_cap_and_size():
    worker = Worker("toy", memory_limit_mb=200).start()
    with pytest.raises(MemoryLimitExceeded, match="over its cap of 200 MB") as info:
        worker.call([{"op": "alloc", "mb": 600}], timeout=60)
    assert info.value.limit_mb == 200
    assert info.value.measured_mb > 200
    assert not worker.alive


def test_memory_cap_applies_while_loading():
    with pytest.raises(MemoryLimitExceeded):
        Worker("toy:alloc_mb=600", memory_limit_mb=150).start()


def test_thread_caps_reach_the_child():
    with Worker("toy", threads=2) as worker:
        assert worker.call([{"op": "env", "name": "OMP_NUM_THREADS"}]) == ["2"]
        assert worker.call([{"op": "env", "name": "MKL_NUM_THREADS"}]) == ["2"]
        # a batch's worker keeps OpenMP's own idle policy (passive threads slow Whisper down)
        assert worker.call([{"op": "env", "name": "OMP_WAIT_POLICY"}]) == [None]
    with Worker("toy", env={"CUDA_VISIBLE_DEVICES": "", **server_env()}) as worker:
        assert worker.call([{"op": "env", "name": "CUDA_VISIBLE_DEVICES"}]) == [""]
        # a server's: its OpenMP threads sleep between parallel regions
        assert worker.call([{"op": "env", "name": "OMP_WAIT_POLICY"}]) == ["PASSIVE"]


def test_a_set_idle_policy_wins_over_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert server_env() == {}


def test_staged_stop_sigterm_then_sigkill():
    slow = Worker("toy:close_s=30", stop_timeout=0.5).start()
    report = slow.stop()
    assert report.stage == "sigterm" and report.released
    assert report.exitcode == -signal.SIGTERM

    stubborn = Worker("toy:close_s=30,ignore_sigterm=true", stop_timeout=0.5).start()
    report = stubborn.stop()
    assert report.stage == "sigkill" and report.released
    assert report.exitcode == -signal.SIGKILL


def test_stop_takes_grandchildren_too():
    worker = Worker("toy").start()
    (grandchild,) = worker.call([{"op": "spawn"}])
    assert not gone(grandchild)
    report = worker.stop()
    assert report.released, report
    assert grandchild in report.pids
    assert gone(grandchild)


def test_stop_of_a_dead_worker_reports_release():
    worker = Worker("toy").start()
    pid = worker.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    report = worker.stop()
    assert report.released and report.exitcode == -signal.SIGKILL


def test_large_array_travels_through_shared_memory():
    audio = np.random.default_rng(1).standard_normal(10 * 60 * 16_000, dtype=np.float32)
    assert audio.nbytes > 38_000_000
    before = set(os.listdir(SHM_DIR))
    with Worker("toy") as worker:
        (echo,) = worker.call([{"op": "echo", "value": audio}])
        assert echo.dtype == np.float32 and np.array_equal(echo, audio)
        # Only the small pickle went through the socket: the frame was tiny.
        frame = encode(Call(1, [audio]))
        assert len(frame) < 4096
        discard(frame)
    assert set(os.listdir(SHM_DIR)) - before == set(), "shared-memory files left behind"


def test_no_orphan_when_parent_is_kill9ed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from modelmora import Worker
            w = Worker("toy:alloc_mb=50").start()
            print(w.pid, flush=True)
            time.sleep(600)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert psutil.Process(child_pid).ppid() == parent.pid
    parent.kill()
    parent.wait()
    assert wait_gone(child_pid, timeout=2.0), "worker outlived its kill -9'd parent"
    ours = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"]
        and "modelmora.runtime._child" in " ".join(p.info["cmdline"])
        and str(parent.pid) in p.info["cmdline"]
    ]
    assert ours == []


def test_worker_started_from_a_short_lived_thread_survives_it():
    box: dict[str, Worker] = {}
    thread = threading.Thread(target=lambda: box.setdefault("w", Worker("toy").start()))
    thread.start()
    thread.join()
    time.sleep(0.3)  # PDEATHSIG would have fired when the thread ended
    worker = box["w"]
    assert worker.call([1]) == [1]
    assert worker.stop().released


def test_tree_sampler_sees_worker_memory():
    with TreeSampler(interval=0.02) as sampler, Worker("toy:alloc_mb=300") as worker:
        worker.call([1])
    assert sampler.peak_mb > process_rss_mb() + 250
    assert 250 < sampler.peak_descendants_mb < sampler.peak_mb  # the worker, without us


@pytest.mark.slow
def test_parent_rss_flat_over_20_cycles_of_a_500mb_model():
    def cycle():
        with Worker("toy:alloc_mb=500") as worker:
            worker.call([1])
            assert worker.memory is not None and worker.memory.peak_rss_mb > 500

    cycle()  # first cycle warms up imports and the spawner thread
    before = process_rss_mb()
    for _ in range(20):
        cycle()
    assert process_rss_mb() - before < 5.0


def test_worker_peak_is_its_own_not_its_parents():
    # Linux carries ru_maxrss across execve: a big parent must not inflate the worker's peak.
    ballast = bytearray(300 * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    with Worker("toy") as worker:
        worker.call([1])
        assert worker.memory is not None and worker.memory.peak_rss_mb < 150
    del ballast


def test_shared_memory_files_are_reused_only_once_released():
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(2_000_000, dtype=np.float32) for _ in range(4)]
    before = set(os.listdir(SHM_DIR))
    with Worker("toy") as worker:
        kept = worker.call([arrays[0]])[0]  # still alive during the next calls
        for a in arrays[1:]:
            (echo,) = worker.call([a])
            assert np.array_equal(echo, a)
            del echo  # released: the worker may rewrite its file
        assert np.array_equal(kept, arrays[0]), "a live result was overwritten"
        # one file per side at most while working, however many calls went through
        ours = [n for n in set(os.listdir(SHM_DIR)) - before if n.startswith("modelmora-")]
        assert len(ours) <= 2
    del kept
    assert set(os.listdir(SHM_DIR)) - before == set(), "shared-memory files left behind"


# --- streamed calls -------------------------------------------------------------------------


def stream_op(value, then=None, delay=0.0):
    return {"op": "stream", "value": value, "then": then, "delay": delay}


def test_stream_chunks_arrive_before_the_end_and_the_worker_stays_usable():
    with Worker("toy") as worker:
        t0 = time.monotonic()
        seen = []
        for chunk in worker.stream(stream_op(["a", "b", "c"], {"op": "sleep", "seconds": 1.5})):
            seen.append((chunk, time.monotonic() - t0))
        total = time.monotonic() - t0
        assert [c for c, _ in seen] == ["a", "b", "c"]
        # every chunk came while the model was still working (it sleeps 1.5 s after them)
        assert seen[-1][1] < total - 1.0, (seen, total)
        assert worker.calls == 1 and worker.memory is not None
        assert list(worker.stream(stream_op("xyz"))) == ["x", "y", "z"]
        assert list(worker.stream("whole")) == ["whole"]  # not a stream op: one chunk
        assert worker.call([1]) == [1]


def test_stream_error_midway_keeps_type_and_traceback_and_worker_survives():
    with Worker("toy") as worker:
        seen = []
        with pytest.raises(ValueError, match="broke at 2") as info:
            for chunk in worker.stream(stream_op([1, 2], {"op": "raise", "message": "broke at 2"})):
                seen.append(chunk)
        assert seen == [1, 2]
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "predict_stream" in info.value.__cause__.tb
        assert worker.call(["still alive"]) == ["still alive"]


def test_stream_unpicklable_chunk_is_a_clear_error():
    with Worker("toy") as worker:
        with pytest.raises(
            ResultNotPicklable, match=r"chunk 1 of the stream \(lock\) cannot be pickled"
        ):
            list(worker.stream(stream_op([1], {"op": "unpicklable"}), timeout=10))
        assert worker.call([5]) == [5]


def test_stream_crash_midway_is_a_crash_and_a_fresh_worker_works():
    worker = Worker("toy").start()
    seen = []
    with pytest.raises(WorkerCrashed, match="exited with code 3") as info:
        for chunk in worker.stream(stream_op([1, 2], {"op": "exit", "code": 3}), timeout=30):
            seen.append(chunk)
    assert seen == [1, 2] and info.value.exitcode == 3
    assert not worker.alive
    with pytest.raises(WorkerStopped):
        list(worker.stream(stream_op([1])))
    with Worker("toy") as fresh:
        assert list(fresh.stream(stream_op([1, 2]))) == [1, 2]


def test_stream_timeout_covers_the_whole_stream():
    worker = Worker("toy").start()
    pid = worker.pid
    seen = []
    t0 = time.monotonic()
    with pytest.raises(WorkerTimeout, match=r"within 1\.0 s"):
        for chunk in worker.stream(stream_op(list(range(100)), delay=0.05), timeout=1.0):
            seen.append(chunk)
    assert 5 < len(seen) < 40 and time.monotonic() - t0 < 3.0
    assert wait_gone(pid)


def test_abandoned_stream_is_cancelled_and_the_worker_kept():
    with Worker("toy") as worker:
        pid = worker.pid
        t0 = time.monotonic()
        for chunk in worker.stream(stream_op(list(range(500)), delay=0.02)):  # 10 s in all
            if chunk == 2:
                break  # the generator is closed here: the child stops at its next chunk
        assert time.monotonic() - t0 < 2.0
        assert worker.alive and worker.pid == pid
        assert worker.call([5]) == [5]
        assert list(worker.stream(stream_op([7, 8]))) == [7, 8]


def test_abandoned_stream_that_does_not_stop_is_killed():
    worker = Worker("toy", stop_timeout=0.5).start()
    pid = worker.pid
    chunks = worker.stream(stream_op([1], {"op": "hang"}))
    assert next(chunks) == 1
    time.sleep(0.3)  # the child looked for a cancel after chunk 1 and went on to hang
    t0 = time.monotonic()
    chunks.close()  # never raises: the child is killed, the worker reports it is stopped
    assert time.monotonic() - t0 < 3.0
    assert wait_gone(pid) and not worker.alive
    with pytest.raises(WorkerStopped):
        worker.call([1])


def test_a_stream_holds_the_worker_until_it_ends():
    with Worker("toy") as worker:
        chunks = worker.stream(stream_op([1, 2], delay=0.3))
        assert next(chunks) == 1
        done = threading.Event()
        other = threading.Thread(target=lambda: (worker.call([3]), done.set()))
        other.start()
        assert not done.wait(0.2), "a call ran in the middle of a stream"
        assert list(chunks) == [2]
        other.join(5)
        assert done.is_set()


def test_large_stream_chunks_travel_through_shared_memory():
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(2_000_000, dtype=np.float32) for _ in range(3)]
    before = set(os.listdir(SHM_DIR))
    with Worker("toy") as worker:
        got = list(worker.stream(stream_op(arrays)))  # all alive together
        assert all(np.array_equal(g, a) for g, a in zip(got, arrays, strict=True))
        assert worker.call([1]) == [1]
    del got
    assert set(os.listdir(SHM_DIR)) - before == set(), "shared-memory files left behind"
