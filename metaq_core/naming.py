"""The on-disk names of the storage layout (broker.md §1.2–§1.3) and the topic-name rules.

Topic names become directory names, so every name is checked here before it can touch a path.
This module only computes and checks names; it never touches the file system.
"""

from __future__ import annotations

import re

from metaq_core.errors import InvalidPartitionError, InvalidTopicError

MAX_TOPIC_BYTES = 200
SEGMENT_SUFFIX = ".meta"
_FORBIDDEN = re.compile(r"[/\\\x00-\x20\x7f]|\s")


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a safe topic name, else raise InvalidTopicError saying why.

    Refused: non-strings, the empty name, ``.`` and ``..``, names with ``/``, ``\\``, NUL,
    whitespace or control characters, and names longer than 200 bytes of UTF-8.
    """
    if not isinstance(topic, str):
        raise InvalidTopicError(f"topic must be a string, not {type(topic).__name__}")
    if not topic:
        raise InvalidTopicError("topic name is empty")
    if topic in (".", ".."):
        raise InvalidTopicError(f"topic name {topic!r} is not allowed")
    bad = _FORBIDDEN.search(topic)
    if bad:
        raise InvalidTopicError(
            f"topic name {topic!r} contains a forbidden character {bad.group()!r} "
            "(no slashes, backslashes, whitespace or control characters)")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in topic):
        raise InvalidTopicError(f"topic name {topic!r} is not valid Unicode")
    size = len(topic.encode("utf-8"))
    if size > MAX_TOPIC_BYTES:
        raise InvalidTopicError(f"topic name is {size} bytes long, more than {MAX_TOPIC_BYTES}")
    return topic


def validate_partition(partition: object, num_partitions: int | None = None) -> int:
    """Return ``partition`` if it is an int in ``0 .. num_partitions-1`` (no upper bound if None)."""
    if isinstance(partition, bool) or not isinstance(partition, int):
        raise InvalidPartitionError(f"partition must be an integer, not {partition!r}")
    if partition < 0 or partition > 0x7FFFFFFF:
        raise InvalidPartitionError(f"wrong partition {partition}")
    if num_partitions is not None and partition >= num_partitions:
        raise InvalidPartitionError(
            f"wrong partition {partition}: the topic has {num_partitions} partition(s)")
    return partition


def store_dir_name(topic: str, partition: int) -> str:
    """``<topic>-<partition>``, e.g. ``meta-test-3``."""
    return f"{topic}-{partition}"


def parse_store_dir_name(name: str) -> tuple[str, int] | None:
    """(topic, partition) of a store directory name split at the last ``-``; None if there is no
    ``-``. Raises ValueError when the suffix is not a partition number (Java aborts start-up)."""
    topic, sep, suffix = name.rpartition("-")
    if not sep or not topic:
        return None
    if not suffix.isascii() or not suffix.isdigit():
        raise ValueError(f"store directory {name!r}: {suffix!r} is not a partition number")
    return topic, int(suffix)


def segment_file_name(start: int) -> str:
    """The 20-digit zero-padded start offset plus ``.meta``."""
    return f"{start:020d}{SEGMENT_SUFFIX}"


def parse_segment_file_name(name: str) -> int | None:
    """The start offset of a ``.meta`` file name (any number of digits); None for other files."""
    if not name.endswith(SEGMENT_SUFFIX):
        return None
    digits = name[: -len(SEGMENT_SUFFIX)]
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"segment file {name!r} is not named by its start offset")
    return int(digits)
