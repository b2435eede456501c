"""A bounded on-disk spool of encoded batches, for when the collector is
unreachable or slow.

Layout: ``spool_dir/<agent_id>-<segment>.spool`` append-only segment files,
each held under an exclusive ``flock`` by the agent writing it. A frame is::

    magic "MTSP" | version u8 | reserved u8 u8 u8 | n_records u32 |
    payload_len u32 | payload_crc32 u32 | header_crc32 u32 | payload

Every append is written and ``fsync``-ed before it counts as spooled; a new
segment's directory entry is ``fsync``-ed too. Reading checks both CRCs: a
torn tail (a crash mid-write) or flipped bits are detected, the bad frames
counted and skipped (the reader resynchronises on the next valid header),
and every valid frame is still delivered. Replay is in order; segments are
deleted once every frame in them has been acknowledged. A crash during
replay resends frames the collector already has: it acknowledges them as
duplicates.

Segments left by a process that is gone (no lock on them) are adopted by
the next agent that starts with the same ``spool_dir`` and replayed first.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("modeltap")

MAGIC = b"MTSP"
VERSION = 1
_HEAD = struct.Struct("<4sBBBBIII")  # magic, version, 3 reserved, n, len, payload crc
_HEAD_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _HEAD_CRC.size
SEGMENT_BYTES = 16 * 1024 * 1024


def encode_frame(payload: bytes, n_records: int) -> bytes:
    """One spool frame for ``payload``."""
    head = _HEAD.pack(MAGIC, VERSION, 0, 0, 0, n_records, len(payload), zlib.crc32(payload))
    return head + _HEAD_CRC.pack(zlib.crc32(head)) + payload


@dataclass
class Frame:
    """A valid frame read back from a segment."""

    segment: Path
    end: int  # offset just past the frame
    n_records: int
    payload: bytes


@dataclass
class Corrupt:
    """A stretch of a segment that held no valid frame."""

    segment: Path
    end: int
    n_records: int  # records lost, where a valid header said how many (else 0)
    reason: str


def read_frames(path: Path, start: int = 0) -> Iterator[Frame | Corrupt]:
    """Frames of a segment from offset ``start``, with the bad stretches."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    for item in _frames(path, data):
        item.end += start
        yield item


def _frames(path: Path, data: bytes) -> Iterator[Frame | Corrupt]:
    pos = 0
    size = len(data)
    while pos < size:
        if size - pos < HEADER_SIZE:
            yield Corrupt(path, size, 0, "torn header at end of segment")
            return
        head = data[pos : pos + _HEAD.size]
        (crc,) = _HEAD_CRC.unpack_from(data, pos + _HEAD.size)
        magic, version, _, _, _, n, length, pcrc = _HEAD.unpack(head)
        if magic != MAGIC or zlib.crc32(head) != crc or version != VERSION:
            nxt = _resync(data, pos + 1)
            yield Corrupt(path, nxt, 0, "damaged frame header")
            pos = nxt
            continue
        body_start = pos + HEADER_SIZE
        end = body_start + length
        if end > size:
            yield Corrupt(path, size, n, "torn frame at end of segment")
            return
        payload = data[body_start:end]
        if zlib.crc32(payload) != pcrc:
            yield Corrupt(path, end, n, "payload checksum mismatch")
        else:
            yield Frame(path, end, n, payload)
        pos = end


def read_frame_at(path: Path, offset: int) -> Frame | Corrupt | None:
    """The frame at ``offset`` (reading only its header and payload), the
    bad stretch starting there, or None at the end of the segment."""
    with open(path, "rb") as f:
        f.seek(offset)
        head = f.read(HEADER_SIZE)
        if not head:
            return None
        if len(head) == HEADER_SIZE:
            magic, version, _, _, _, n, length, pcrc = _HEAD.unpack_from(head)
            (crc,) = _HEAD_CRC.unpack_from(head, _HEAD.size)
            if magic == MAGIC and version == VERSION and zlib.crc32(head[: _HEAD.size]) == crc:
                payload = f.read(length)
                if len(payload) == length and zlib.crc32(payload) == pcrc:
                    return Frame(path, offset + HEADER_SIZE + length, n, payload)
    # Damaged or torn: let the scanning reader find where good frames resume.
    return next(iter(read_frames(path, offset)), None)


def _resync(data: bytes, pos: int) -> int:
    """Offset of the next header with a valid CRC at or after ``pos``."""
    while True:
        i = data.find(MAGIC, pos)
        if i < 0 or len(data) - i < HEADER_SIZE:
            return len(data)
        head = data[i : i + _HEAD.size]
        (crc,) = _HEAD_CRC.unpack_from(data, i + _HEAD.size)
        if zlib.crc32(head) == crc:
            return i
        pos = i + 1


@dataclass
class _Segment:
    path: Path
    offset: int  # bytes already acknowledged
    adopted: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool of one agent. Not thread-safe: the exporter thread alone
    appends and replays."""

    def __init__(self, directory: str | os.PathLike[str], agent_id: str, cap_bytes: int) -> None:
        if cap_bytes <= 0:
            raise ValueError("spool cap must be a positive number of bytes")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.agent_id = agent_id
        self.cap_bytes = int(cap_bytes)
        self._segment_no = 0
        self._active: BinaryIO | None = None
        self._active_path: Path | None = None
        self._active_size = 0
        self._queue: list[_Segment] = []  # to replay, oldest first
        self._locks: dict[Path, BinaryIO] = {}
        self._lock = threading.RLock()
        self._own_pending = 0  # records of this agent waiting in the spool
        self.adopted_pending = 0  # records adopted from earlier processes
        self._adopt()

    # -- size and adoption -------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes all segments in the directory take."""
        total = 0
        for p in self.dir.glob("*.spool"):
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    def _adopt(self) -> None:
        """Takes over segments whose writer is gone (no lock held)."""
        for p in sorted(self.dir.glob("*.spool"), key=lambda q: q.stat().st_mtime):
            if p.name.startswith(self.agent_id):
                continue
            f = open(p, "rb")  # noqa: SIM115 (held open for the lock)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()  # a live agent owns it
                continue
            self._locks[p] = f
            self._queue.append(_Segment(p, 0, True))
            for fr in read_frames(p):
                self.adopted_pending += fr.n_records
        if self._queue:
            log.info(
                "modeltap: adopted %d spool segment(s) with %d records from an earlier process",
                len(self._queue),
                self.adopted_pending,
            )

    # -- writing -----------------------------------------------------------

    def append(self, payload: bytes, n_records: int) -> bool:
        """Spools one batch durably. False (nothing written) when the spool
        would grow past its cap."""
        with self._lock:
            return self._append(payload, n_records)

    def _append(self, payload: bytes, n_records: int) -> bool:
        frame = encode_frame(payload, n_records)
        if self.used_bytes() + len(frame) > self.cap_bytes:
            return False
        if self._active is None or self._active_size + len(frame) > SEGMENT_BYTES:
            self._rotate()
        assert self._active is not None
        self._active.write(frame)
        self._active.flush()
        os.fsync(self._active.fileno())
        self._active_size += len(frame)
        self._own_pending += n_records
        return True

    def _rotate(self) -> None:
        self._segment_no += 1
        path = self.dir / f"{self.agent_id}-{self._segment_no:08d}.spool"
        f = open(path, "ab")  # noqa: SIM115 (kept open while active)
        fcntl.flock(f, fcntl.LOCK_EX)
        _fsync_dir(self.dir)
        self._active = f
        self._active_path = path
        self._active_size = 0
        self._locks[path] = f
        self._queue.append(_Segment(path, 0, False))

    # -- replay ------------------------------------------------------------

    def backlog(self) -> bool:
        """True while frames wait to be replayed."""
        return any(self._unread(entry) for entry in self._queue)

    def _unread(self, seg: _Segment) -> bool:
        try:
            return seg.path.stat().st_size > seg.offset
        except FileNotFoundError:
            return False

    def pending_records(self) -> int:
        """Records of this agent in the spool."""
        return self._own_pending

    def next(self) -> tuple[Frame | Corrupt, bool] | None:
        """The oldest unacknowledged frame (or bad stretch) and whether it
        came from an adopted segment; None when the spool is empty."""
        with self._lock:
            return self._next()

    def _next(self) -> tuple[Frame | Corrupt, bool] | None:
        while self._queue:
            seg = self._queue[0]
            try:
                item = read_frame_at(seg.path, seg.offset)
            except FileNotFoundError:
                item = None
            if item is not None:
                return item, seg.adopted
            if seg.path == self._active_path:
                return None
            self._drop_segment(seg.path)
            self._queue.pop(0)
        return None

    def ack(self, item: Frame | Corrupt, adopted: bool) -> None:
        """Marks ``item`` (returned by :meth:`next`) as done."""
        with self._lock:
            self._ack(item, adopted)

    def _ack(self, item: Frame | Corrupt, adopted: bool) -> None:
        seg = self._queue[0]
        seg.offset = item.end
        if adopted:
            self.adopted_pending = max(self.adopted_pending - item.n_records, 0)
        else:
            self._own_pending = max(self._own_pending - item.n_records, 0)
        if seg.path == self._active_path and item.end >= self._active_size:
            # Everything written so far went out: start afresh.
            self._close_active()
            self._drop_segment(seg.path)
            self._queue.pop(0)
        elif seg.path != self._active_path and not self._unread(seg):
            self._drop_segment(seg.path)
            self._queue.pop(0)

    def _close_active(self) -> None:
        self._active = None
        self._active_path = None
        self._active_size = 0

    def _drop_segment(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        f = self._locks.pop(path, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        """Releases the locks; what is left stays for a later process."""
        for f in self._locks.values():
            with contextlib.suppress(OSError):
                f.close()
        self._locks.clear()
        self._close_active()
