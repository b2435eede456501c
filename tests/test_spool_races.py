"""Many processes and threads sharing one spool directory: constructing
spools (which adopts what nobody holds), appending across tiny segments,
replaying and deleting, all at once. No frame may be lost, delivered twice or
written into a segment someone else already unlinked, and no call may raise."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import modeltap.spool as spool_mod
from modeltap.spool import Frame, Spool, open_spool

pytestmark = pytest.mark.timeout(120)

# One worker process: THREADS threads, each looping for SECONDS over
# construct -> append a few frames (several segments) -> maybe drain
# everything it holds (own and adopted) -> close. Every appended token goes to
# the worker's "sent" log once append returned True; every replayed token to
# its "got" log. Failures (an exception anywhere) go to stderr and exit 1.
WORKER = r"""
import os, random, sys, threading, time, traceback
import modeltap.spool as sp
from modeltap.spool import Frame, Spool

directory, tag, seconds, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
sp.SEGMENT_BYTES = 1500  # a rotation every few frames
failures = []

def loop(t):
    rnd = random.Random(f"{tag}-{t}")
    sent = open(os.path.join(directory, f"..sent-{tag}-{t}"), "w")
    got = open(os.path.join(directory, f"..got-{tag}-{t}"), "w")
    stop = time.monotonic() + seconds
    i = 0
    try:
        while time.monotonic() < stop:
            s = Spool(directory, f"{tag}{t}x{i:06d}", 1 << 30)
            for _ in range(rnd.randint(0, 12)):
                token = f"{tag}-{t}-{i}"
                i += 1
                if s.append(token.encode().ljust(300, b"."), 1):
                    sent.write(token + "\n")
            if rnd.random() < 0.5:
                while (nxt := s.next()) is not None:
                    item, adopted = nxt
                    if isinstance(item, Frame):
                        got.write(item.payload.rstrip(b".").decode() + "\n")
                    else:
                        failures.append(f"corrupt {item}")
                    s.ack(item, adopted)
            s.close()
            i += 1
    except BaseException:
        failures.append(traceback.format_exc())
    finally:
        sent.close()
        got.close()

ts = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
if failures:
    sys.stderr.write("\n".join(failures[:5]))
    sys.exit(1)
"""


def _lines(d: Path, prefix: str) -> list[str]:
    out: list[str] = []
    for p in sorted(d.glob(prefix + "*")):
        out.extend(x for x in p.read_text().splitlines() if x)
    return out


def test_concurrent_construct_rotate_adopt_delete(tmp_path):
    """The named races: an adopter taking a segment being created (frames
    then fsynced into an unlinked file) and Spool() raising FileNotFoundError
    on segments another worker just removed."""
    d = tmp_path / "spool"
    d.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(d), f"w{k}", "8", "3"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    errs = [p.communicate(timeout=90)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err
    # Whatever is left, one last spool adopts and replays.
    last = Spool(d, "final", 1 << 30)
    got = _lines(d, "..got-")
    while (nxt := last.next()) is not None:
        item, adopted = nxt
        assert isinstance(item, Frame), item
        assert adopted
        got.append(item.payload.rstrip(b".").decode())
        last.ack(item, adopted)
    last.close()
    sent = _lines(d, "..sent-")
    assert len(sent) > 2000, "the stress did too little to mean anything"
    assert len(set(sent)) == len(sent)
    missing = set(sent) - set(got)
    assert not missing, f"{len(missing)} of {len(sent)} frames lost, e.g. {sorted(missing)[:3]}"
    assert len(got) == len(set(got)), "a frame was delivered twice"
    assert set(got) == set(sent)
    assert not list(d.glob("*.spool")), "every segment deleted once replayed"


def test_constructions_racing_deletions_never_raise(tmp_path):
    """Spool() while other threads create and delete segments as fast as they
    can: vanished files are already handled, never an exception."""
    d = tmp_path / "spool"
    d.mkdir()
    stop = time.monotonic() + 3.0
    errors: list[BaseException] = []

    def churn(k: int) -> None:
        n = 0
        try:
            while time.monotonic() < stop:
                s = Spool(d, f"churn{k}-{n}", 1 << 30)
                s.append(b"x" * 100, 1)
                # A full replay deletes the segment right away; the others
                # are closed with their frames for an adopter to delete.
                while (nxt := s.next()) is not None:
                    s.ack(*nxt)
                s.close()
                n += 1
        except BaseException as e:
            errors.append(e)

    def construct() -> None:
        n = 0
        try:
            while time.monotonic() < stop:
                s = Spool(d, f"c{n}", 1 << 30)
                s.used_bytes()
                s.backlog()
                s.close()
                n += 1
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=churn, args=(k,)) for k in range(3)]
    ts += [threading.Thread(target=construct) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]


def test_vanished_segments_are_handled(tmp_path, monkeypatch):
    """Every path that touches a segment by name tolerates its removal
    between listing and use: used_bytes, adoption's sort by mtime, the open
    and lock of adoption, backlog and replay."""
    d = tmp_path / "spool"
    other = Spool(d, "gone", 1 << 20)
    assert other.append(b"a" * 50, 1)
    other.close()
    (seg,) = d.glob("*.spool")
    real_stat = Path.stat

    def vanishing_stat(self: Path, *a: object, **k: object) -> os.stat_result:
        if self.name == seg.name and os.path.exists(self):
            os.unlink(self)  # removed by someone else just now
        return real_stat(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", vanishing_stat)
    s = Spool(d, "me", 1 << 20)
    assert s.adopted_pending == 0
    assert s.used_bytes() == 0
    assert not s.backlog()
    assert s.next() is None
    s.close()


def test_segment_unlinked_under_the_writer_is_replaced(tmp_path):
    """Belt and braces: should the writer's segment ever lose its name, the
    next frame goes to a fresh segment instead of an unlinked file."""
    d = tmp_path / "spool"
    s = Spool(d, "w", 1 << 20)
    assert s.append(b"one", 1)
    (seg,) = d.glob("*.spool")
    seg.unlink()  # nobody should, but if it happens the frame must survive
    assert s.append(b"two", 1)
    names = [p.name for p in d.glob("*.spool")]
    assert len(names) == 1
    payloads = []
    while (nxt := s.next()) is not None:
        if isinstance(nxt[0], Frame):
            payloads.append(nxt[0].payload)
        s.ack(*nxt)
    # "one" is still read through the descriptor held on it; "two" went to a
    # segment with a name, where a later process can find it.
    assert payloads == [b"one", b"two"]
    s.close()


def test_fresh_segment_is_locked_before_it_has_its_name(tmp_path, monkeypatch):
    """The named race, made deterministic: an adopter starting at the worst
    moment of the writer's rotation (right after the segment appears under
    its final name) cannot take it."""
    d = tmp_path / "spool"
    d.mkdir()
    adopted: list[int] = []
    real_link = os.link

    def link_then_adopt(src: object, dst: object, *a: object, **k: object) -> None:
        real_link(src, dst, *a, **k)  # type: ignore[arg-type]
        intruder = Spool(d, "intruder", 1 << 20)
        adopted.append(len(intruder._queue))
        while (nxt := intruder.next()) is not None:
            intruder.ack(*nxt)
        intruder.close()

    monkeypatch.setattr(spool_mod.os, "link", link_then_adopt)
    s = Spool(d, "writer", 1 << 20)
    assert s.append(b"frame", 1)
    monkeypatch.setattr(spool_mod.os, "link", real_link)
    assert adopted == [0]
    (seg,) = d.glob("*.spool")
    assert os.stat(seg).st_nlink == 1
    item, adopted_flag = s.next()  # type: ignore[misc]
    assert isinstance(item, Frame)
    assert item.payload == b"frame"
    assert not adopted_flag
    s.close()


def test_temporary_files_of_a_crashed_writer_are_removed(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    stale = d / ".deadbeef-00000001.spool.new"
    stale.write_bytes(b"")
    fresh = d / ".cafe-00000001.spool.new"
    fresh.write_bytes(b"")
    old = time.time() - 60
    os.utime(stale, (old, old))
    s = Spool(d, "me", 1 << 20)
    assert not stale.exists()
    assert fresh.exists()  # may be a live writer's, about to be linked
    s.close()


def test_unusable_directory_is_a_clear_oserror(tmp_path):
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(OSError, match="spool directory"):
        Spool(f, "a", 1 << 20)
    with pytest.raises(OSError, match="spool directory"):
        Spool(f / "sub", "a", 1 << 20)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere: no error to expect
            with pytest.raises(OSError, match="spool directory"):
                Spool(ro, "a", 1 << 20)
    finally:
        ro.chmod(0o700)
    errors: list[int] = []
    assert open_spool(f, "a", 1 << 20, lambda: errors.append(1)) is None
    assert errors == [1]


def test_agent_whose_spool_cannot_be_created_still_delivers(tmp_path):
    """No half-initialised agent: without a usable spool directory it counts
    an error and delivers without a spool."""
    import modeltap
    from collector_util import Collector

    f = tmp_path / "file"
    f.write_text("not a directory")
    col = Collector(tmp_path / "store.duckdb").start()
    try:
        a = modeltap.Agent("m", collector=col.addr, spool_dir=f, metrics_interval=None)
        for i in range(100):
            a.log([float(i)], 0)
        assert a.flush(20)
        a.close()
        s = a.stats()
        assert s["shipped"] == 100
        assert s["errors"] >= 1
    finally:
        col.stop()


@pytest.mark.filterwarnings("ignore:This process:DeprecationWarning")
def test_forked_child_does_not_keep_the_parents_segments_locked(tmp_path):
    """A child inherits the parent's segment descriptors; it closes its
    copies so that, once the parent is gone, another process can adopt them
    even while the child still runs."""
    d = tmp_path / "spool"
    s = Spool(d, "parent", 1 << 20)
    assert s.append(b"p" * 40, 1)
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: stay alive until told to go
        os.close(w)
        os.write(ready_w, b"x")  # the after-fork hooks have run
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    try:
        s.close()  # the parent lets go; the child still runs
        adopter = Spool(d, "adopter", 1 << 20)
        assert adopter.adopted_pending == 1
        adopter.close()
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)
