"""Spare workers (framework-warm starts), with toy models in real processes (no mocks)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from modelmora import ModelLoadError, ModelSpec, Worker
from modelmora.runtime.protocol import SHM_DIR, shm_prefix
from modelmora.runtime.spares import SparePool
from modelmora.runtime.spawn import spare_key

PRELOAD = "modelmora.models.toy:ToyPreloadModel"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_spare_imports_its_framework_and_holds_no_model():
    spare = Worker(PRELOAD)
    prepared = spare.prepare()
    try:
        assert prepared.pid == spare.pid and spare.alive
        assert prepared.modules == ["modelmora.models.toy", "numpy", "numpy.linalg"]
        assert prepared.cuda_initialized is False
        assert prepared.error is None
        assert spare.rss_mb() < 150  # an interpreter with numpy, no model
    finally:
        assert spare.stop().released


def test_a_failed_prewarm_leaves_a_spare_that_serves():
    spare = Worker("modelmora.models.toy:ToyBadPrewarmModel")
    prepared = spare.prepare()
    assert prepared.error is None and prepared.modules == ["modelmora.models.toy", "numpy"]
    worker = Worker(ModelSpec("modelmora.models.toy:ToyBadPrewarmModel")).start(spare=spare)
    try:
        assert worker.warm and worker.call([3]) == [3]
    finally:
        assert worker.stop().released


def test_warm_start_returns_everything_and_release_is_verified():
    spare = Worker(PRELOAD)
    spare.prepare()
    pid = spare.pid
    assert pid is not None
    worker = Worker(ModelSpec(PRELOAD, {"alloc_mb": 200})).start(spare=spare)
    assert worker.warm and worker.pid == pid
    assert spare.pid is None and spare.prepared is None and not spare.alive  # emptied
    assert worker.call([{"op": "pid"}, 7]) == [pid, 7]
    assert worker.rss_mb() > 200  # the model is in the spare's process now
    report = worker.stop()
    assert report.released and report.stage == "graceful" and pid in report.pids
    assert gone(pid)
    assert glob.glob(os.path.join(SHM_DIR, shm_prefix(pid) + "*")) == []


def test_a_spare_serves_only_its_key():
    spare = Worker("toy", threads=2)
    spare.prepare()
    try:
        with pytest.raises(ValueError, match="kind, threads and env must match"):
            Worker("toy").start(spare=spare)
        with pytest.raises(ValueError, match="not a prepared spare"):
            Worker("toy").start(spare=Worker("toy"))
        assert spare.alive  # refused, not consumed
    finally:
        assert spare.stop().released


def test_pool_starts_warm_then_refills_in_the_background():
    with SparePool({"toy": 1}) as pool:
        key = spare_key("toy")
        first = pool.prepare(key).pid
        worker = pool.start(Worker("toy:alloc_mb=50"))
        assert worker.warm and worker.pid == first
        assert wait_for(lambda: len(pool.spares()) == 1), "no spare prepared after the take"
        assert pool.spares()[0].pid != worker.pid
        info = pool.info()
        assert info["warm_starts"] == 1 and info["cold_starts"] == 0
        assert info["ready"][0]["kind"] == "toy" and info["ready"][0]["rss_mb"] > 0
        assert worker.stop().released
        spares = [w.pid for w in pool.spares()]
    assert all(gone(p) for p in spares if p)  # close() stopped the spare


def test_a_crashed_spare_is_replaced_and_the_load_is_cold():
    with SparePool({"toy": 1}) as pool:
        spare = pool.prepare(spare_key("toy"))
        dead = spare.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        assert wait_for(lambda: gone(dead), 3.0)
        worker = pool.start(Worker("toy"))
        assert not worker.warm and worker.pid != dead
        assert worker.call([1]) == [1]
        assert pool.info()["lost"] == 1 and pool.info()["cold_starts"] == 1
        assert wait_for(lambda: len(pool.spares()) == 1), "the dead spare was not replaced"
        assert pool.spares()[0].alive
        assert worker.stop().released


def test_a_spare_that_cannot_prepare_is_not_retried_at_once():
    with pytest.raises(ModelLoadError, match="modelmora_no_such_framework"):
        Worker("modelmora.models.toy:ToyBadPreloadModel").prepare()
    with SparePool({"modelmora.models.toy:ToyBadPreloadModel": 1}) as pool:
        key = spare_key("modelmora.models.toy:ToyBadPreloadModel")
        pool.ensure(key)
        assert wait_for(lambda: pool.info()["failed"] == 1)
        pool.ensure(key)  # within the retry delay: nothing spawned
        time.sleep(0.3)
        assert pool.info()["failed"] == 1 and pool.info()["preparing"] == 0


def test_a_spare_that_does_not_fit_is_not_kept():
    asked: list[float] = []
    with SparePool({"toy": 1}, fits=lambda mb: asked.append(mb) or False) as pool:
        pool.ensure(spare_key("toy"))
        assert wait_for(lambda: bool(asked))
        time.sleep(0.2)
        assert pool.spares() == [] and pool.reserved_mb() == 0.0


def test_shed_stops_spares_to_free_memory():
    with SparePool({"toy": 2}) as pool:
        a = pool.prepare(spare_key("toy"))
        pool.prepare(spare_key("toy", threads=1))
        futures = pool.shed(1.0, keep_key=spare_key("toy", threads=1))
        assert [f.result(5).released for f in futures] == [True]
        assert a.pid is None and [w.threads for w in pool.spares()] == [1]


def test_no_spare_or_worker_outlives_a_kill9ed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import threading, time
            from modelmora import Worker
            from modelmora.runtime.spares import SparePool
            from modelmora.runtime.spawn import spare_key
            pool = SparePool({"toy": 1})
            pool.prepare(spare_key("toy"))
            box = {}
            # from a short-lived thread: PDEATHSIG must not fire when it ends
            t = threading.Thread(target=lambda: box.setdefault("w", pool.start(Worker("toy"))))
            t.start(); t.join()
            while not pool.spares():
                time.sleep(0.05)
            print(box["w"].pid, box["w"].warm, pool.spares()[0].pid, flush=True)
            time.sleep(600)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker_pid, warm, spare_pid = parent.stdout.readline().split()
    assert warm == "True"
    pids = [int(worker_pid), int(spare_pid)]
    time.sleep(0.3)
    assert not any(gone(p) for p in pids)
    parent.kill()
    parent.wait()
    assert wait_for(lambda: all(gone(p) for p in pids), 3.0), "a child outlived its parent"


def test_take_waits_for_the_spare_being_prepared():
    with SparePool({PRELOAD: 1}) as pool:
        key = spare_key(PRELOAD)
        assert pool.take(key) is None
        pool.ensure(key)
        spare = pool.take(key, wait=30.0)  # the import is under way: ahead of a cold start
        assert spare is not None and spare.prepared is not None
        worker = Worker(ModelSpec(PRELOAD)).start(spare=spare)
        assert worker.warm and worker.call([1]) == [1]
        assert worker.stop().released


@pytest.mark.slow
def test_an_embedding_spare_is_prewarmed_and_loads_minilm():
    spare = Worker("embedding")
    prepared = spare.prepare(timeout=300)
    assert prepared.error is None and prepared.cuda_initialized is False
    assert "transformers.conversion_mapping" in prepared.modules  # the table built ahead
    assert "transformers.models.bert.modeling_bert" in prepared.modules
    worker = Worker(ModelSpec("embedding", {"device": "cpu"})).start(spare=spare)
    try:
        assert worker.warm
        (vector,) = worker.call(["a request for an evicted model"])
        assert len(vector) == 384
    finally:
        assert worker.stop().released
