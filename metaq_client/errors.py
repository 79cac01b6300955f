"""The exceptions of the client, one hierarchy under ``MetaqClientError``.

Failures the broker reports through a status code on a send are *results* (``SendResult``), not
exceptions (protocol §6.1); these classes are for everything else: no connection, a connection
lost while a request waited, a local misuse. This module only defines exceptions.
"""

from __future__ import annotations


class MetaqClientError(Exception):
    """Base of every error raised by ``metaq_client``."""


class BrokerUnavailableError(MetaqClientError, ConnectionError):
    """There is no connection to the broker right now (it is being re-established in the background)."""


class ConnectionClosedError(MetaqClientError, ConnectionError):
    """The connection closed while the request waited for its answer; the request may or may not
    have been carried out by the broker."""


class RequestTimeoutError(MetaqClientError, TimeoutError):
    """A blocking call did not complete within its timeout (Java: MetaOpeartionTimeoutException)."""


class BrokerError(MetaqClientError):
    """The broker answered a request with an unexpected status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"broker answered {status}: {text}")
        self.status = status
        self.text = text


class NoPartitionError(MetaqClientError):
    """No partition is known for a topic (and no default topic applies)."""


class InvalidRecordError(MetaqClientError):
    """A fetched record failed its checksum or cannot be decoded (the pull API's answer to garbage)."""


class ReadOnlyMessageError(MetaqClientError):
    """A message was modified while it is read-only (inside a partition selector, 1.4.4)."""


class InvalidGroupError(MetaqClientError, ValueError):
    """A consumer group name that the Java client refuses (protocol §6.2)."""


class ClientClosedError(MetaqClientError):
    """The client, producer or consumer was used outside its ``async with`` / after ``close()``."""


class ConsumptionInterrupted(Exception):
    """Raised by a listener to roll the message back (1.4.4's interruption): it is not counted as
    consumed, not counted as a failure, and is delivered again."""
