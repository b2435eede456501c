"""An agent created before fork() works in every child: new agent id, own
ring and threads, the child's pid on its batches, and no deadlock."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import uuid
from pathlib import Path

import pytest

import modeltap

pytestmark = pytest.mark.filterwarnings("ignore:This process:DeprecationWarning")


class DirSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, data: bytes) -> None:
        (self.path / f"{os.getpid()}-{uuid.uuid4().hex}.bin").write_bytes(data)


def read_all(path: Path):
    return [modeltap.decode_batch(p.read_bytes()) for p in sorted(path.glob("*.bin"))]


def child_work(agent: modeltap.Agent, k: int) -> None:
    for i in range(100):
        agent.log([float(k), float(i)], k)
    agent.close()


def test_prefork_agent_in_four_workers(tmp_path):
    agent = modeltap.Agent("m", sink=DirSink(tmp_path), metrics_interval=0.05)
    for i in range(10):
        agent.log([-1.0, float(i)], 0)

    # keep a thread logging in the parent while forking, to catch lock bugs
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            agent.log([-2.0, 0.0], 0)

    t = threading.Thread(target=busy)
    t.start()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=child_work, args=(agent, k)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    stop.set()
    t.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    agent.close()

    batches = read_all(tmp_path)
    by_pid: dict[int, list] = {}
    for b in batches:
        by_pid.setdefault(b["model"]["pid"], []).append(b)
    child_pids = {p.pid for p in procs}
    assert child_pids | {os.getpid()} == set(by_pid)
    agent_ids = {b["model"]["pid"]: b["agent_id"] for b in batches}
    assert len(set(agent_ids.values())) == 5  # one per process
    assert agent_ids[os.getpid()] == agent.agent_id
    for k, p in enumerate(procs):
        rows = [r for b in by_pid[p.pid] for r in b["features"].tolist()]
        assert sorted(rows) == [[float(k), float(i)] for i in range(100)]
    parent_rows = [r for b in by_pid[os.getpid()] for r in b["features"].tolist()]
    assert [r for r in parent_rows if r[0] == -1.0] == [[-1.0, float(i)] for i in range(10)]
    ids = [r for b in batches for r in b["request_ids"]]
    assert len(ids) == len(set(ids))
    s = agent.stats()
    assert s["shipped"] + s["dropped_full"] == s["logged"]
    assert s["pending"] == 0


def test_plain_os_fork(tmp_path):
    agent = modeltap.Agent("m", sink=DirSink(tmp_path), metrics_interval=None)
    parent_id = agent.agent_id
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            assert agent.agent_id != parent_id
            assert agent.pid == os.getpid()
            agent.log([1.0], 1)
            agent.close()
            code = 0 if agent.stats()["shipped"] == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    agent.log([2.0], 2)
    agent.close()
    batches = read_all(tmp_path)
    assert {b["model"]["pid"] for b in batches} == {pid, os.getpid()}
