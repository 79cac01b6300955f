"""``stats`` over the protocol (Java ``getStats``, protocol §5.6): ask a broker for an item and
split the answer into lines. Parsing of one item, ``offsets``, lives here too because direct-connect
consumers learn a topic's partitions from it. No other module formats or parses stats text.
"""

from __future__ import annotations

from metaq_client.answers import text_of
from metaq_client.connection import ConnectionPool
from metaq_client.errors import BrokerError
from metaq_core.wire import Result, Stats


async def broker_stats(pool: ConnectionPool, url: str, item: str = "") -> list[str]:
    """The lines of ``stats <item>`` between ``STATS`` and ``END`` (for ``config``: the file's lines)."""
    answer = await pool.request(url, Stats(item))
    if not isinstance(answer, Result):
        raise BrokerError(0, "stats was answered with a value frame")
    text = text_of(answer)
    if answer.status != 200:
        raise BrokerError(answer.status, text)
    lines = text.split("\r\n")
    if item != "config" and lines[:1] == ["STATS"]:
        lines = lines[1:lines.index("END")] if "END" in lines else lines[1:]
    return [line for line in lines if line]


def parse_offsets(lines: list[str]) -> list[tuple[str, int, int, int]]:
    """``<topic> part <p> min_offset <min> max_offset <max>`` lines → (topic, p, min, max)."""
    out = []
    for line in lines:
        tokens = line.split(" ")
        if len(tokens) == 7 and tokens[1] == "part":
            out.append((tokens[0], int(tokens[2]), int(tokens[4]), int(tokens[6])))
    return out
