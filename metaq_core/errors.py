"""One exception hierarchy for the engine, each error carrying the protocol status it maps to.

This module only defines exceptions; it must not import anything else of the package, so that
every layer (records, storage, the wire codec, the server) can raise and catch the same types.
"""

from __future__ import annotations


class MetaqError(Exception):
    """Base of every error raised by metaq_core. ``status`` is the MetaQ status code to answer with."""

    status: int = 500


class InvalidTopicError(MetaqError, ValueError):
    """A topic name that must never become a path (empty, ``/``, ``..``, control characters...)."""


class InvalidPartitionError(MetaqError, ValueError):
    """A partition number that is negative or not below the topic's partition count."""


class MessageTooLargeError(MetaqError, ValueError):
    """A record larger than ``max_transfer_size``: it could never be fetched, so it is refused."""


class InvalidMessageError(MetaqError, ValueError):
    """Message data that cannot be stored as given (e.g. a malformed attribute block)."""

    status = 400


class CorruptRecordError(MetaqError, ValueError):
    """A record whose length is impossible or whose checksum does not match its data."""


class StoreClosedError(MetaqError):
    """The store or partition log was closed; nothing more can be appended or read."""


class ReadOnlyError(MetaqError):
    """The partition is read-only: opened read-only, or made read-only by an earlier I/O error."""


class StorageIOError(MetaqError, OSError):
    """A write or fsync failed. The partition becomes read-only and its file is cut back."""


class StoreLoadError(MetaqError):
    """A data directory that cannot be loaded safely (a gap between segments, a bad name...)."""


class ClockBackwardsError(MetaqError):
    """The wall clock went backwards: no message id can be issued without risking a duplicate."""


class PolicyError(MetaqError, ValueError):
    """An invalid retention policy (``delete,<age>`` / ``archive,<age>[,true]``)."""
