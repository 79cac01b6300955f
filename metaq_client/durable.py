"""Durable small-file updates for the client's local state (offsets, recover store): write a whole
file atomically (temporary file, fsync, rename, fsync of the directory) and delete durably.
Blocking functions: callers run them in a worker thread. Nothing else of the client touches disk.
"""

from __future__ import annotations

import os
import threading


def write_atomically(path: str, payload: bytes) -> None:
    """After return ``path`` holds ``payload`` on disk; a crash leaves the old file or the new one."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    sync_directory(directory)


def remove_durably(path: str) -> None:
    os.remove(path)
    sync_directory(os.path.dirname(path))


def sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
