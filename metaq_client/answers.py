"""Reading the body of a broker's ``result`` answer: as text (error messages, stats) or as the
decimal offset of a 301 or an ``offset`` answer. What a status means is decided by the callers."""

from __future__ import annotations

from metaq_core.wire import Result


def text_of(answer: Result) -> str:
    return (answer.body or b"").decode("utf-8", "replace")


def offset_of(answer: Result) -> int | None:
    """The body as a decimal number, or None when it is not one."""
    text = text_of(answer)
    return int(text) if text.lstrip("-").isdigit() else None
