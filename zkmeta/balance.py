"""Consumer-group partition assignment exactly as the MetaQ 1.4.4 Java client computes it
(broker.md §4.1–§4.3).

Several consumers of one group — Java and Python mixed — each compute *their own* share of a
topic's partitions from the same two lists read from ZooKeeper. They only agree (every partition
claimed by exactly one of them, no owner-node fights, no partition left unconsumed) when every
client computes bit-for-bit the same thing. This module is that computation:

* the Java orders: ``String.compareTo`` (UTF-16 code units) for the consumer and partition lists a
  consumer balances over — so ``"0-10"`` sorts before ``"0-2"`` — and ``Partition.compareTo``
  (numeric broker id, then numeric partition) which only the producer uses;
* how the two input lists are built from ZooKeeper data (``MetaZookeeper
  .getPartitionStringsForSubTopics`` and ``ConsumerZooKeeper.getConsumersPerTopic``);
* ``DEFAULT`` (``DefaultLoadBalanceStrategy``): contiguous ranges whose sizes differ by at most one;
* ``CONSIST`` (``ConsisHashStrategy`` with ``HashAlgorithm.KETAMA_HASH``): an MD5 ketama ring of
  160 points per consumer.

Pure functions only: no I/O, no ZooKeeper, no kazoo, no trio, no logging, no global state. Safe to
call from any thread; trivially testable.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "NUM_REPS",
    "HashRing",
    "Strategy",
    "assignment",
    "consistent_hash_assignment",
    "consumers_for_topic",
    "default_assignment",
    "full_assignment",
    "java_sorted",
    "java_string_key",
    "java_utf8",
    "ketama_hash",
    "partition_numeric_key",
    "partition_strings",
    "registration_topics",
    "ring_points",
    "sort_consumers",
    "sort_partitions",
]

#: Virtual nodes per consumer on the CONSIST ring (``ConsisHashStrategy.NUM_REPS``): 40 MD5
#: digests of ``"<consumerId>-<i>"``, ``i = 0…39``, four 32-bit points each.
NUM_REPS = 160


# --------------------------------------------------------------------------------- Java strings

def java_string_key(s: str) -> bytes:
    """Sort key reproducing Java's ``String.compareTo``.

    Java compares strings by UTF-16 code units, Python by code points; they differ when a
    character above U+FFFF (a surrogate pair, units 0xD800–0xDFFF) meets one in U+E000–U+FFFF:
    Java puts ``"\\U00010000"`` *before* ``"\\uffff"``. Big-endian UTF-16 bytes compare exactly
    like the code units (a proper prefix sorts first, as in Java). ``surrogatepass`` keeps lone
    surrogates as the single code unit Java would hold.
    """
    return s.encode("utf-16-be", "surrogatepass")


def java_sorted(strings: Iterable[str]) -> list[str]:
    """``Collections.sort(list)`` of a ``List<String>``: stable, by :func:`java_string_key`.

    Duplicates are kept (Java's sort keeps them).
    """
    return sorted(strings, key=java_string_key)


def java_utf8(s: str) -> bytes:
    """``String.getBytes("utf-8")`` (Java's ``ByteUtils.getBytes``), the bytes that get hashed.

    Identical to ``s.encode("utf-8")`` for every well-formed string. For strings Python can hold
    but Java could not produce identically: a surrogate *pair* written as two code points is
    joined (Java sees one character), and a lone surrogate becomes ``b"?"`` (Java's replacement).
    """
    if s.isascii():
        return s.encode("ascii")
    joined = s.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "surrogatepass")
    return joined.encode("utf-8", "replace")


def _java_is_whitespace(ch: str) -> bool:
    """``Character.isWhitespace``: Unicode space separators except the no-break spaces, plus the
    ASCII controls TAB, LF, VT, FF, CR and the separators FS, GS, RS, US."""
    if ch in "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f":
        return True
    if ch in "\u00a0\u2007\u202f":
        return False
    return unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def _java_is_blank(s: str) -> bool:
    """``StringUtils.isBlank``: empty or only ``Character.isWhitespace`` characters."""
    return all(_java_is_whitespace(ch) for ch in s)


# ------------------------------------------------------------------------------- sort orders

def sort_partitions(partitions: Iterable[str]) -> list[str]:
    """A consumer's partition list (§4.1): de-duplicated, sorted **as strings** the Java way.

    ``["0-2", "0-10", "0-2"]`` → ``["0-10", "0-2"]``. (``getPartitionStringsForSubTopics``
    merges duplicates with ``contains`` and then ``Collections.sort``s the strings.)
    """
    return java_sorted(dict.fromkeys(partitions))


def sort_consumers(consumers: Iterable[str]) -> list[str]:
    """A topic's consumer list (§4.1): sorted **as strings** the Java way, duplicates kept.

    Java's ``getConsumersPerTopic`` never de-duplicates: a registration whose data names the
    same topic twice puts its consumer in the list twice, which changes ``C`` for DEFAULT.
    ZooKeeper children are unique, so this only happens with such odd data.
    """
    return java_sorted(consumers)


_JAVA_INT = re.compile(r"[+-]?\d+")


def _java_parse_int(text: str) -> int:
    # Integer.parseInt: optional sign, decimal digits (any Unicode Nd digit), 32-bit range.
    if not _JAVA_INT.fullmatch(text):
        raise ValueError(f"not a Java int: {text!r}")
    value = int(text)
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"out of Java int range: {text!r}")
    return value


def partition_numeric_key(partition: str) -> tuple[int, int]:
    """Sort key of ``Partition.compareTo``: numeric broker id, then numeric partition.

    Only the **producer** orders partitions this way (§3.5: ``"0-2"`` before ``"0-10"``); the
    consumer balance uses :func:`sort_partitions`. Parsing is ``new Partition(String)``:
    ``split("-")`` and ``Integer.parseInt`` of the first two pieces (``ValueError`` otherwise).
    """
    pieces = partition.split("-")
    if len(pieces) < 2:
        raise ValueError(f"not a partition string: {partition!r}")
    return _java_parse_int(pieces[0]), _java_parse_int(pieces[1])


# ---------------------------------------------------------------------- inputs of an assignment

def partition_strings(sub_brokers: Mapping[str, int]) -> list[str]:
    """The ``partitions`` input (§4.1) from the children of ``brokers/topics-sub/<topic>``.

    ``sub_brokers`` maps each child name (``"3-m"``, ``"3-s1"``, …) to the ``numParts`` read
    from its JSON; children whose data could not be read or parsed must be left out by the
    caller (Java logs and skips them). As ``MetaZookeeper.getPartitionStringsForSubTopics``:

    * a child counts when commons-lang ``StringUtils.split(name, "-")`` gives exactly two
      tokens (runs of ``-`` are one separator, leading/trailing ``-`` ignored); the suffix is
      not checked (``"3-x"`` counts) and the broker id is the first token **verbatim**;
    * it contributes ``"<token0>-0"`` … ``"<token0>-(numParts-1)"`` (nothing if numParts <= 0);
    * duplicates (master and slaves of one broker id) are merged, the result string-sorted.

    Every Java consumer includes exactly these strings, so a Python consumer must too — a
    partition list that differs by one entry shifts every DEFAULT range after it.
    """
    partitions: dict[str, None] = {}
    for name, num_parts in sub_brokers.items():
        tokens = [token for token in name.split("-") if token]
        if len(tokens) != 2:
            continue
        for part in range(num_parts):
            partitions.setdefault(f"{tokens[0]}-{part}", None)
    return java_sorted(partitions)


def registration_topics(data: str) -> list[str]:
    """Topics listed in a ``consumers/<group>/ids/<consumerId>`` node (``ConsumerZooKeeper
    .getTopics``): none when blank, else Java's ``data.split(",")`` — empty pieces in the
    middle or at the start are kept, trailing empty pieces dropped."""
    if _java_is_blank(data):
        return []
    pieces = data.split(",")
    while pieces and pieces[-1] == "":
        pieces.pop()
    return pieces


def consumers_for_topic(registrations: Mapping[str, str], topic: str) -> list[str]:
    """The ``consumers`` input (§4.1): ids of the group's consumers whose registration data
    lists ``topic``, string-sorted.

    ``registrations`` maps each child of ``consumers/<group>/ids`` to its data. A consumer whose
    data names the topic twice appears twice, as in Java (see :func:`sort_consumers`).
    """
    return sort_consumers(
        consumer
        for consumer, data in registrations.items()
        for listed in registration_topics(data)
        if listed == topic
    )


# ----------------------------------------------------------------------------------- DEFAULT

def default_assignment(consumer_id: str, consumers: Sequence[str],
                       partitions: Sequence[str]) -> list[str]:
    """``DefaultLoadBalanceStrategy.getPartitions`` (§4.2): this consumer's contiguous range.

    With ``P`` partitions, ``C`` consumers and ``k`` = index of ``consumer_id`` (its first
    occurrence, as ``List.indexOf``)::

        base, extra = divmod(P, C)
        first = base*k + min(k, extra)
        count = base + (1 if k < extra else 0)      # the FIRST `extra` consumers get one more

    The inputs are sorted here (:func:`sort_consumers`, :func:`sort_partitions`), so raw
    ZooKeeper child lists may be passed; lists already in Java order are unchanged by that.
    Returns ``[]`` when ``consumer_id`` is not a consumer, when there are no partitions, or when
    there are no consumers (Java would divide by zero; its caller never asks). The result is in
    list order.
    """
    consumers = sort_consumers(consumers)
    partitions = sort_partitions(partitions)
    if not consumers or consumer_id not in consumers:
        return []
    k = consumers.index(consumer_id)
    base, extra = divmod(len(partitions), len(consumers))
    first = base * k + min(k, extra)
    count = base + (1 if k < extra else 0)
    return partitions[first:first + count]


# ----------------------------------------------------------------------------------- CONSIST

def _md5(key: str) -> bytes:
    return hashlib.md5(java_utf8(key)).digest()


def ketama_hash(key: str) -> int:
    """``HashAlgorithm.KETAMA_HASH.hash(key)``: MD5 of the UTF-8 bytes, bytes 0–3 read as an
    **unsigned little-endian** 32-bit integer (``(d[3]&0xFF)<<24 | … | d[0]&0xFF``, widened to a
    non-negative ``long`` and masked with ``0xffffffffL``)."""
    return int.from_bytes(_md5(key)[0:4], "little")


def ring_points(consumer_id: str) -> list[int]:
    """The 160 ring points of one consumer, in the order Java ``put``s them.

    For ``i = 0…39``: ``d = MD5("<consumerId>-<i>")``; points ``d[0:4]``, ``d[4:8]``,
    ``d[8:12]``, ``d[12:16]``, each unsigned little-endian. Points may repeat (then they count
    once: same key, same owner).
    """
    points: list[int] = []
    for i in range(NUM_REPS // 4):
        digest = _md5(f"{consumer_id}-{i}")
        for h in range(4):
            points.append(int.from_bytes(digest[4 * h:4 * h + 4], "little"))
    return points


@dataclass(frozen=True)
class HashRing:
    """The ``TreeMap<Long, String>`` of ``ConsisHashStrategy.buildConsumerMap``, frozen.

    ``points`` is sorted ascending; ``owners[i]`` owns ``points[i]``.
    """

    points: tuple[int, ...]
    owners: tuple[str, ...]

    @classmethod
    def build(cls, consumers: Iterable[str]) -> HashRing:
        """Put every consumer's points, consumers in Java string order, later ``put`` winning.

        ``TreeMap.put`` on an existing key replaces the value: when two consumers share a ring
        point, the consumer that sorts **later** owns it (whatever order ``consumers`` had —
        Java's list is always sorted).
        """
        ring: dict[int, str] = {}
        for consumer in sort_consumers(consumers):
            for point in ring_points(consumer):
                ring[point] = consumer  # TreeMap.put: overwrite
        points = sorted(ring)
        return cls(tuple(points), tuple(ring[p] for p in points))

    def owner_of_hash(self, key_hash: int) -> str | None:
        """``findConsumerByPartition`` given the hash: the owner of the point equal to it
        (``containsKey``), else of the smallest point above it (``ceilingKey``), else — past the
        last point — of the smallest point (``firstKey``, wrap-around). ``None`` on an empty
        ring (Java would throw; its caller never asks)."""
        if not self.points:
            return None
        index = bisect.bisect_left(self.points, key_hash)
        if index == len(self.points):
            index = 0
        return self.owners[index]

    def owner_of(self, partition: str) -> str | None:
        """The consumer that owns ``partition`` (hashed with :func:`ketama_hash`)."""
        return self.owner_of_hash(ketama_hash(partition))


def consistent_hash_assignment(consumer_id: str, consumers: Sequence[str],
                               partitions: Sequence[str]) -> list[str]:
    """``ConsisHashStrategy.getPartitions`` (§4.3): the partitions whose ring owner is
    ``consumer_id``.

    Java collects them in a ``HashSet`` (duplicates merged, order unspecified); this returns them
    de-duplicated in Java string order. ``[]`` when ``consumer_id`` is not a consumer or either
    list is empty.
    """
    if consumer_id not in consumers:
        return []
    ring = HashRing.build(consumers)
    return [p for p in sort_partitions(partitions) if ring.owner_of(p) == consumer_id]


# ---------------------------------------------------------------------------------- strategies

class Strategy(enum.Enum):
    """``LoadBalanceStrategy.Type`` (``ConsumerConfig.loadBalanceStrategyType``)."""

    DEFAULT = "DEFAULT"
    CONSIST = "CONSIST"

    @classmethod
    def from_name(cls, name: str) -> Strategy:
        """``LoadBalanceStrategy.Type.valueOf(name)``: the exact, case-sensitive Java name.

        ``ValueError`` for anything else (Java: ``IllegalArgumentException``).
        """
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown load balance strategy type: {name!r}") from None

    def assign(self, consumer_id: str, consumers: Sequence[str],
               partitions: Sequence[str]) -> list[str]:
        """This strategy's ``getPartitions(topic, consumerId, curConsumers, curPartitions)``."""
        if self is Strategy.CONSIST:
            return consistent_hash_assignment(consumer_id, consumers, partitions)
        return default_assignment(consumer_id, consumers, partitions)


def assignment(strategy: Strategy | str, consumer_id: str, consumers: Sequence[str],
               partitions: Sequence[str]) -> list[str]:
    """``mine`` (§4.4 step 4) for ``strategy`` (a :class:`Strategy` or its Java name)."""
    if not isinstance(strategy, Strategy):
        strategy = Strategy.from_name(strategy)
    return strategy.assign(consumer_id, consumers, partitions)


def full_assignment(strategy: Strategy | str, consumers: Sequence[str],
                    partitions: Sequence[str]) -> dict[str, list[str]]:
    """What every consumer of the group computes: ``{consumer: mine}`` for each distinct
    consumer, in Java string order. With well-formed input (no duplicate consumer) every
    partition appears in exactly one list."""
    if not isinstance(strategy, Strategy):
        strategy = Strategy.from_name(strategy)
    sorted_consumers = list(dict.fromkeys(sort_consumers(consumers)))
    if strategy is Strategy.CONSIST:
        ring = HashRing.build(consumers)
        result: dict[str, list[str]] = {c: [] for c in sorted_consumers}
        for partition in sort_partitions(partitions):
            owner = ring.owner_of(partition)
            if owner is not None:
                result[owner].append(partition)
        return result
    return {c: default_assignment(c, consumers, partitions) for c in sorted_consumers}
