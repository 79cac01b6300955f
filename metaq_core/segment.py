"""One segment file of a partition log: its start offset, its written length and its durable end.

A segment knows only its own file (Kafka's split): it opens, reads, syncs and closes it. Which
segment is newest, when to roll and when to fsync are the partition log's decisions.
"""

from __future__ import annotations

import os

import attrs

from metaq_core import _segment

_OPEN_FLAGS = os.O_CLOEXEC


@attrs.define(eq=False)
class Segment:
    """``start`` is the offset of the first byte; ``written`` the bytes in the file; ``durable``
    the high-water mark (bytes known to be on disk, or for a read-only view, known complete)."""

    start: int
    path: str
    written: int
    durable: int
    writable: bool = False
    _fd: int | None = None

    @property
    def end(self) -> int:
        """The readable end of this segment: start + durable length."""
        return self.start + self.durable

    def fileno(self) -> int:
        fd = self._fd
        if fd is None:
            flags = (os.O_RDWR | os.O_APPEND) if self.writable else os.O_RDONLY
            fd = self._fd = os.open(self.path, flags | _OPEN_FLAGS)
        return fd

    def read(self, position: int, length: int) -> bytes:
        return _segment.read_at(self.fileno(), position, length)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def create_segment(directory: str, start: int, name: str) -> Segment:
    """Create an empty writable segment file and make its directory entry durable."""
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o644)
    try:
        sync_directory(directory)
    except BaseException:
        os.close(fd)
        raise
    return Segment(start=start, path=path, written=0, durable=0, writable=True, fd=fd)


def sync_directory(directory: str) -> None:
    """fsync a directory so that entries created or removed in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS)
    try:
        _segment.fullsync(fd)
    finally:
        os.close(fd)
