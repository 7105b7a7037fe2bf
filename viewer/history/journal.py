"""The intake log: OTLP request bodies the viewer acknowledged and has not yet committed to its history.

Contracts:

- :meth:`Journal.append` writes one record (kind, body) to the end of the current segment file with one
  ``write`` and returns the log position after it. Once it returns, the record survives a crash of the viewer
  process (it is in the operating system's page cache); like SQLite's WAL at ``synchronous=NORMAL``, an
  operating-system crash or a power cut may lose the last moments. A failed write (disk full, read-only) is
  undone and raised as :class:`JournalError`: nothing was acknowledged, so the caller answers 503.
- Positions only grow: ``segment << 32 | offset``. A record ends where the next one starts.
- :meth:`Journal.records` yields the records after a position, in order, with the position after each; a
  record cut short by a crash, or damaged (its CRC does not match), ends that segment's records.
- :meth:`Journal.release` forgets every segment wholly before a position (the history committed them). The
  segment being appended to is never deleted. ``append`` runs on the viewer's loop, ``release`` on the
  history writer's thread.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = ["Journal", "JournalError", "position"]

_HEADER: Final = struct.Struct("<2sBII")  # magic, kind, body length, CRC-32 of the body
_MAGIC: Final = b"OF"
_SEGMENT_NAME: Final = "{:08d}.log"


class JournalError(OSError):
    """The intake log cannot take a record; the message says why."""


def position(segment: int, offset: int) -> int:
    """The log position of ``offset`` in segment number ``segment``."""
    return segment << 32 | offset


def _split(pos: int) -> tuple[int, int]:
    return pos >> 32, pos & 0xFFFFFFFF


class Journal:
    """An append-only log of records in numbered segment files inside ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.folder = Path(folder)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments: dict[int, int] = {}  # segment number -> size on disk
        self._fd = -1
        self._current = 0
        self._end = 0  # offset of the end of the current segment

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the folder if needed and find the segments; appends go to a new segment."""
        try:
            self.folder.mkdir(exist_ok=True)
            for path in self.folder.glob("*.log"):
                if path.stem.isdigit():
                    self._segments[int(path.stem)] = path.stat().st_size
        except OSError as exc:
            raise JournalError(f"cannot use the intake log {self.folder}: {exc.strerror or exc}") from None
        # never append after what a crash may have cut short: start a fresh segment
        self._current = max(self._segments, default=0) + 1
        self._fd = -1
        self._end = 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @property
    def end(self) -> int:
        """The position after the last record appended (or where appending will start)."""
        return position(self._current, self._end)

    @property
    def nbytes(self) -> int:
        """Bytes the segments on disk hold: records not yet released."""
        with self._lock:
            return sum(self._segments.values())

    # ------------------------------------------------------------------ writing (the loop)

    def append(self, kind: int, body: bytes) -> int:
        """Write one record; returns the position after it. Raises :class:`JournalError`."""
        record = _HEADER.pack(_MAGIC, kind, len(body), zlib.crc32(body)) + body
        with self._lock:
            if self._fd >= 0 and self._end and self._end + len(record) > self.segment_bytes:
                os.close(self._fd)
                self._fd = -1
                self._current += 1
                self._end = 0
            try:
                if self._fd < 0:
                    path = self.folder / _SEGMENT_NAME.format(self._current)
                    self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    self._segments[self._current] = self._end = os.fstat(self._fd).st_size
                written = os.write(self._fd, record)
                if written != len(record):
                    raise OSError(28, "short write")  # ENOSPC's number: a partial write is a full disk
            except OSError as exc:
                self._undo()
                raise JournalError(f"cannot write to the intake log {self.folder}: {exc.strerror or exc}") from None
            self._end += written
            self._segments[self._current] = self._end
            return position(self._current, self._end)

    def _undo(self) -> None:
        """After a failed write: cut the segment back to its last whole record, or move to a new segment."""
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, self._end)
        except OSError:
            os.close(self._fd)
            self._fd = -1
            self._current += 1
            self._end = 0

    # ------------------------------------------------------------------ reading and releasing

    def records(self, after: int) -> Iterator[tuple[int, int, bytes]]:
        """``(position after it, kind, body)`` of every whole record after ``after``, in order."""
        first_segment, first_offset = _split(after)
        with self._lock:
            numbers = sorted(n for n in self._segments if n >= first_segment and n != self._current)
        for number in numbers:
            offset = first_offset if number == first_segment else 0
            try:
                data = (self.folder / _SEGMENT_NAME.format(number)).read_bytes()
            except OSError:
                continue
            while offset + _HEADER.size <= len(data):
                magic, kind, length, crc = _HEADER.unpack_from(data, offset)
                start = offset + _HEADER.size
                body = data[start : start + length]
                if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                    break  # cut short by a crash, or damaged: the rest of this segment cannot be trusted
                offset = start + length
                yield position(number, offset), kind, body

    def release(self, upto: int) -> None:
        """Delete the segments wholly before ``upto`` (never the one being appended to)."""
        segment, _ = _split(upto)
        with self._lock:
            doomed = [n for n in self._segments if n < segment and n != self._current]
            for n in doomed:
                del self._segments[n]
        for n in doomed:
            try:
                (self.folder / _SEGMENT_NAME.format(n)).unlink()
            except FileNotFoundError:
                pass
            except OSError:
                with self._lock:
                    self._segments[n] = 0  # could not delete: try again with the next release
