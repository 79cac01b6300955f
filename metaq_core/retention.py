"""Retention policies (broker.md §1.11): ``delete,<age>`` and ``archive,<age>[,true]``.

A run removes the longest prefix of read-only segments (never the newest) whose modification
time is older than ``now - age``, then deletes them, renames them to ``.arc`` or zips them to
``.zip``. Scheduling (``deleteWhen``, a Quartz cron expression: see ``metaq_core.cron``) is the
caller's job; this module decides and acts on files only.
"""

from __future__ import annotations

import logging
import os
import re
import time
import zipfile

import attrs

from metaq_core.errors import PolicyError
from metaq_core.partition import PartitionLog
from metaq_core.segment import sync_directory

log = logging.getLogger("metaq.retention")

_AGE = re.compile(r"^\s*(\d+)\s*([smhSMH]?)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "": 3600}
DEFAULT_DELETE_POLICY = "delete,168"


@attrs.frozen
class RetentionPolicy:
    action: str            # "delete" or "archive"
    max_age_seconds: int
    compress: bool = False
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """Parse ``delete,<age>`` / ``archive,<age>[,true]``; age in s, m or h (hours if bare)."""
        parts = [p.strip() for p in str(text).split(",")]
        name = parts[0].lower() if parts else ""
        if name not in ("delete", "archive"):
            raise PolicyError(f"Unknown delete policy {parts[0]!r} in {text!r} (use delete or archive)")
        if len(parts) < 2 or not parts[1]:
            raise PolicyError(f"delete policy {text!r} needs an age, e.g. {name},168")
        match = _AGE.match(parts[1])
        if not match:
            raise PolicyError(f"delete policy {text!r}: {parts[1]!r} is not an age like 168, 30m or 45s")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        compress = False
        if name == "archive" and len(parts) > 2:
            compress = parts[2].lower() == "true"
        elif name == "delete" and len(parts) > 2:
            raise PolicyError(f"delete policy {text!r} takes only an age")
        return cls(name, seconds, compress, str(text))


def expired_prefix(plog: PartitionLog, policy: RetentionPolicy, now: float) -> int:
    """How many of the oldest read-only segments are older than the policy allows."""
    limit = now - policy.max_age_seconds
    count = 0
    for seg in plog.segments()[:-1]:
        try:
            mtime = os.stat(seg.path).st_mtime
        except FileNotFoundError:
            break
        if mtime >= limit:
            break
        count += 1
    return count


def apply_policy(plog: PartitionLog, policy: RetentionPolicy, now: float | None = None) -> list[str]:
    """Remove the expired prefix of ``plog`` per ``policy``; returns the files acted on."""
    if plog.read_only:
        return []
    now = time.time() if now is None else now
    count = expired_prefix(plog, policy, now)
    removed = plog.remove_oldest(count)
    done = []
    for seg in removed:
        try:
            if policy.action == "delete":
                os.unlink(seg.path)
            elif policy.compress:
                with zipfile.ZipFile(seg.path + ".zip", "w", zipfile.ZIP_DEFLATED) as archive:
                    archive.write(seg.path, os.path.basename(seg.path))
                os.unlink(seg.path)
            else:
                os.rename(seg.path, seg.path + ".arc")
            done.append(seg.path)
        except OSError as exc:
            log.error("%s: retention could not %s %s: %s", plog.name, policy.action, seg.path, exc)
    if removed:
        sync_directory(plog.directory)
        log.info("%s: retention (%s) removed %d segment(s), min offset now %d",
                 plog.name, policy.text, len(removed), plog.min_offset)
    return done
