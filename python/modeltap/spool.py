"""A bounded on-disk spool of encoded batches, for when the collector is
unreachable or slow.

Layout: ``spool_dir/<agent_id>-<segment>.spool`` append-only segment files,
each held under an exclusive ``flock`` by the agent writing it. A frame is::

    magic "MTSP" | version u8 | reserved u8 u8 u8 | n_records u32 |
    payload_len u32 | payload_crc32 u32 | header_crc32 u32 | payload

Every append is written and ``fsync``-ed before it counts as spooled; a new
segment's directory entry is ``fsync``-ed too. A write that fails (a full
disk) is cut back off the segment, so what was spooled before stays
readable. Reading checks both CRCs: a torn tail (a crash mid-write) or
flipped bits are detected, the bad frames counted and skipped (the reader
resynchronises on the next valid header), and every valid frame is still
delivered. Replay is in order; segments are deleted once every frame in them
has been acknowledged. A crash during replay resends frames the collector
already has: it acknowledges them as duplicates.

Segments left by a process that is gone (no lock on them) are adopted by
the next agent that starts with the same ``spool_dir`` and replayed first.

Many processes share a directory, so every name may vanish or change
between a listing and its use. The rules that keep that safe:

- A segment is created and locked under a temporary name adopters ignore,
  and only then linked under its ``.spool`` name: nobody can take it before
  its writer holds the lock.
- Only the holder of a segment's lock deletes it, and it deletes while it
  still holds the lock.
- An adopter locks, then checks that the path still names the inode it
  locked (a segment deleted by its holder in between is skipped; a path that
  now names another file is tried again).
- All reads and size checks go through the descriptor the lock is held on;
  a listed file that is gone by the time it is looked at was already handled
  by someone else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("modeltap")

MAGIC = b"MTSP"
VERSION = 1
_HEAD = struct.Struct("<4sBBBBIII")  # magic, version, 3 reserved, n, len, payload crc
_HEAD_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _HEAD_CRC.size
SEGMENT_BYTES = 16 * 1024 * 1024
SUFFIX = ".spool"
# Segments being created: not yet linked under their .spool name.
_NEW_SUFFIX = ".spool.new"
# Temporary files older than this are a dead writer's, to remove.
STALE_NEW_S = 10.0


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
    """Frames of a segment from offset ``start``, with the bad stretches.
    A segment that no longer exists has none."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return
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


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    parts = []
    while n > 0:
        chunk = os.pread(fd, n, offset)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _frame_at_fd(fd: int, path: Path, offset: int, size: int) -> Frame | Corrupt | None:
    """The frame at ``offset`` of the open segment ``fd`` whose valid bytes
    end at ``size`` (reading only its header and payload), the bad stretch
    starting there, or None at the end."""
    if offset >= size:
        return None
    head = _pread_all(fd, min(HEADER_SIZE, size - offset), offset)
    if len(head) == HEADER_SIZE:
        magic, version, _, _, _, n, length, pcrc = _HEAD.unpack_from(head)
        (crc,) = _HEAD_CRC.unpack_from(head, _HEAD.size)
        if magic == MAGIC and version == VERSION and zlib.crc32(head[: _HEAD.size]) == crc:
            end = offset + HEADER_SIZE + length
            if end <= size:
                payload = _pread_all(fd, length, offset + HEADER_SIZE)
                if len(payload) == length and zlib.crc32(payload) == pcrc:
                    return Frame(path, end, n, payload)
    # Damaged or torn: let the scanning reader find where good frames resume.
    rest = _pread_all(fd, size - offset, offset)
    for item in _frames(path, rest):
        item.end += offset
        return item
    return None


def read_frame_at(path: Path, offset: int) -> Frame | Corrupt | None:
    """The frame at ``offset`` (reading only its header and payload), the
    bad stretch starting there, or None at the end of the segment (or when
    the segment no longer exists)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _frame_at_fd(fd, Path(path), offset, os.fstat(fd).st_size)
    finally:
        os.close(fd)


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
    fd: int  # the descriptor the lock is held on
    offset: int  # bytes already acknowledged
    adopted: bool
    # Own segments: bytes of whole, fsynced frames (anything past it is the
    # remains of a failed write). Adopted ones: None, the file's size.
    limit: int | None = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _lock_existing(path: Path) -> int | None:
    """Opens and locks a segment nobody holds. None when a live agent holds
    it or it is gone (its holder finished it)."""
    for _ in range(8):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # gone, or not ours to read
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = os.fstat(fd)
            now = os.stat(path)
        except OSError:
            os.close(fd)  # held by a live agent, or deleted since the open
            return None
        if _same_file(mine, now) and mine.st_nlink > 0:
            return fd
        # The name now belongs to another file: look again.
        os.close(fd)
    return None


def _dir_error(directory: Path, e: OSError) -> OSError:
    reason = e.strerror or str(e)
    return OSError(e.errno, f"spool directory {str(directory)!r} is unusable: {reason}")


# Spools of this process: a forked child closes its copies of their
# descriptors (see _close_in_child).
_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


class Spool:
    """The spool of one agent. Appends and replays are serialised by an
    internal lock; other processes and other ``Spool`` objects may share the
    directory.

    Raises :class:`OSError` (with the directory in its message) when
    ``directory`` cannot be created or written, :class:`ValueError` for a
    cap that is not positive."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        agent_id: str,
        cap_bytes: int,
        *,
        segment_bytes: int | None = None,
    ) -> None:
        if cap_bytes <= 0:
            raise ValueError("spool cap must be a positive number of bytes")
        self.dir = Path(directory)
        self.agent_id = agent_id
        self.cap_bytes = int(cap_bytes)
        self.segment_bytes = int(segment_bytes or SEGMENT_BYTES)
        self._segment_no = 0
        self._active: _Segment | None = None
        self._queue: list[_Segment] = []  # to replay, oldest first
        self._lock = threading.RLock()
        self._closed = False
        self._own_pending = 0  # records of this agent waiting in the spool
        self.adopted_pending = 0  # records adopted from earlier processes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Fail now, with a clear message, rather than at the first
            # append when the collector is already away.
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=self.dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise _dir_error(self.dir, e) from e
        _spools.add(self)
        self._adopt()

    # -- size and adoption -------------------------------------------------

    def _names(self, suffix: str) -> list[Path]:
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        return [self.dir / n for n in names if n.endswith(suffix)]

    def used_bytes(self) -> int:
        """Bytes all segments in the directory take."""
        total = 0
        for p in self._names(SUFFIX):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def _adopt(self) -> None:
        """Takes over segments whose writer is gone (no lock held), oldest
        first, and removes the temporary files of writers that died while
        creating a segment."""
        now = time.time()
        for p in self._names(_NEW_SUFFIX):
            # A writer holds its temporary name for microseconds; only old
            # ones are a dead writer's (and a live one copes with losing it).
            try:
                if now - p.stat().st_mtime < STALE_NEW_S:
                    continue
            except OSError:
                continue
            fd = _lock_existing(p)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(p)
                os.close(fd)
        dated: list[tuple[float, str, Path]] = []
        for p in self._names(SUFFIX):
            try:
                dated.append((p.stat().st_mtime, p.name, p))
            except OSError:
                continue  # gone: already handled by its holder
        for _, _, p in sorted(dated):
            fd = _lock_existing(p)
            if fd is None:
                continue
            records = 0
            try:
                size = os.fstat(fd).st_size
                offset = 0
                while (item := _frame_at_fd(fd, p, offset, size)) is not None:
                    if isinstance(item, Frame):
                        records += item.n_records
                    offset = item.end
            except OSError as e:
                # Unreadable now (an I/O error): leave it for a later process.
                log.warning("modeltap: spool segment %s unreadable (%s); left alone", p.name, e)
                os.close(fd)
                continue
            self._queue.append(_Segment(p, fd, 0, True))
            self.adopted_pending += records
        if self._queue:
            log.info(
                "modeltap: adopted %d spool segment(s) with %d records from an earlier process",
                len(self._queue),
                self.adopted_pending,
            )

    # -- writing -----------------------------------------------------------

    def append(self, payload: bytes, n_records: int) -> bool:
        """Spools one batch durably. False (nothing written) when the spool
        would grow past its cap. Raises OSError when the write fails (a full
        disk, an I/O error); nothing of the frame is left behind then."""
        with self._lock:
            if self._closed:
                return False
            return self._append(payload, n_records)

    def _append(self, payload: bytes, n_records: int) -> bool:
        frame = encode_frame(payload, n_records)
        if self.used_bytes() + len(frame) > self.cap_bytes:
            return False
        seg = self._active
        if (
            seg is None
            or (seg.limit or 0) + len(frame) > self.segment_bytes
            or os.fstat(seg.fd).st_nlink == 0  # nobody may delete it, but if it happens
        ):
            seg = self._rotate()
        start = seg.limit or 0
        try:
            view = memoryview(frame)
            while view:
                view = view[os.write(seg.fd, view) :]
            os.fsync(seg.fd)
        except OSError:
            # A partial frame would read as damage and hide what follows it.
            try:
                os.ftruncate(seg.fd, start)
            except OSError:
                self._close_active()  # replay stops at its limit; write elsewhere
            raise
        seg.limit = start + len(frame)
        self._own_pending += n_records
        return True

    def _rotate(self) -> _Segment:
        self._close_active()
        for _ in range(100):
            self._segment_no += 1
            name = f"{self.agent_id}-{self._segment_no:08d}"
            final = self.dir / (name + SUFFIX)
            tmp = self.dir / ("." + name + _NEW_SUFFIX)
            try:
                fd = os.open(
                    tmp,
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                    0o644,
                )
            except FileExistsError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    ok = _same_file(os.fstat(fd), os.stat(tmp))
                except OSError:
                    ok = False
                # Lost to a cleaner of stale temporary files (it deletes
                # them): start over under another name.
                if not ok or not self._publish(tmp, final):
                    os.close(fd)
                    continue
                _fsync_dir(self.dir)
            except BaseException:
                os.close(fd)
                raise
            seg = _Segment(final, fd, 0, False, 0)
            self._active = seg
            self._queue.append(seg)
            return seg
        raise OSError(errno.EAGAIN, f"could not create a spool segment in {str(self.dir)!r}")

    @staticmethod
    def _publish(tmp: Path, final: Path) -> bool:
        """Gives the locked temporary file its segment name, never replacing
        an existing segment. False when the name is taken or the temporary
        file is gone."""
        try:
            os.link(tmp, final)
        except (FileExistsError, FileNotFoundError):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            # No hard links on this filesystem.
            if final.exists():
                os.unlink(tmp)
                return False
            os.rename(tmp, final)
            return True
        os.unlink(tmp)
        return True

    # -- replay ------------------------------------------------------------

    @staticmethod
    def _valid_end(seg: _Segment) -> int:
        if seg.fd < 0:
            return 0
        return seg.limit if seg.limit is not None else os.fstat(seg.fd).st_size

    def backlog(self) -> bool:
        """True while frames wait to be replayed."""
        with self._lock:
            return any(self._unread(seg) for seg in self._queue)

    def _unread(self, seg: _Segment) -> bool:
        try:
            return self._valid_end(seg) > seg.offset
        except OSError:
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
                item = _frame_at_fd(seg.fd, seg.path, seg.offset, self._valid_end(seg))
            except OSError:
                item = None
            if item is not None:
                return item, seg.adopted
            if seg is self._active:
                return None
            self._drop_segment(seg)
            self._queue.pop(0)
        return None

    def ack(self, item: Frame | Corrupt, adopted: bool) -> None:
        """Marks ``item`` (returned by :meth:`next`) as done."""
        with self._lock:
            self._ack(item, adopted)

    def _ack(self, item: Frame | Corrupt, adopted: bool) -> None:
        if not self._queue or self._queue[0].path != item.segment:
            return  # already handled (the spool was closed meanwhile)
        seg = self._queue[0]
        seg.offset = item.end
        if adopted:
            self.adopted_pending = max(self.adopted_pending - item.n_records, 0)
        else:
            self._own_pending = max(self._own_pending - item.n_records, 0)
        if seg is self._active and item.end >= (seg.limit or 0):
            # Everything written so far went out: start afresh.
            self._close_active()
            self._drop_segment(seg)
            self._queue.pop(0)
        elif seg is not self._active and not self._unread(seg):
            self._drop_segment(seg)
            self._queue.pop(0)

    def _close_active(self) -> None:
        self._active = None

    def _drop_segment(self, seg: _Segment) -> None:
        """Deletes a finished segment while still holding its lock, so that
        no adopter can take it between the delete and the release."""
        if seg.fd < 0:
            return
        with contextlib.suppress(OSError):
            if _same_file(os.fstat(seg.fd), os.stat(seg.path)):
                os.unlink(seg.path)
        with contextlib.suppress(OSError):
            os.close(seg.fd)
        seg.fd = -1

    def close(self) -> None:
        """Releases the locks; what is left stays for a later process."""
        with self._lock:
            self._closed = True
            for seg in self._queue:
                if seg.fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(seg.fd)
                    seg.fd = -1
            self._queue.clear()
            self._close_active()

    def _close_in_child(self) -> None:
        """In a forked child: closes the child's copies of the descriptors
        without touching the (possibly held) lock. The parent's locks belong
        to the open file descriptions both processes share; holding copies
        here would keep the segments locked for as long as the child lives,
        after the parent has let go of them or died."""
        self._closed = True
        self._lock = threading.RLock()
        for seg in self._queue:
            if seg.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)
                seg.fd = -1
        self._queue = []
        self._active = None


def _close_in_child() -> None:
    for s in list(_spools):
        s._close_in_child()


os.register_at_fork(after_in_child=_close_in_child)


def open_spool(
    directory: str | os.PathLike[str],
    agent_id: str,
    cap_bytes: int,
    on_error: Callable[[], None],
) -> Spool | None:
    """A :class:`Spool`, or None (the failure counted with ``on_error`` and
    logged) when the directory is unusable: the agent then delivers without
    a spool instead of failing. A bad cap is the caller's error
    (:class:`ValueError`)."""
    if cap_bytes <= 0:
        raise ValueError("spool cap must be a positive number of bytes")
    try:
        return Spool(directory, agent_id, cap_bytes)
    except Exception as e:
        on_error()
        log.error("modeltap: %s; delivering without a spool", e)
        return None
