"""Consumer-group assignment (broker.md §4.1–§4.3): the Java orders, DEFAULT and CONSIST.

Every literal expected value below is either computed by hand (the arithmetic is shown) or was
produced by the Java 1.4.4 code itself (``DefaultLoadBalanceStrategy`` / ``ConsisHashStrategy`` /
``HashAlgorithm.KETAMA_HASH`` transcribed into a scratch harness and run on a JDK); those are
marked "Java says". The CONSIST tests also cross-check against an independent brute-force
implementation written here with ``hashlib`` and ``struct`` only.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zkmeta.balance import (
    NUM_REPS, HashRing, Strategy, assignment, consistent_hash_assignment, consumers_for_topic,
    default_assignment, full_assignment, java_sorted, java_string_key, java_utf8, ketama_hash,
    partition_numeric_key, partition_strings, registration_topics, ring_points, sort_consumers,
    sort_partitions,
)

# ============================================================================== Java orders


def test_partitions_sort_as_strings_so_0_10_comes_before_0_2() -> None:
    raw = ["0-2", "0-10", "0-1", "0-0", "0-11", "0-2"]
    assert sort_partitions(raw) == ["0-0", "0-1", "0-10", "0-11", "0-2"]  # duplicates merged


def test_broker_ids_sort_as_strings_too() -> None:
    assert sort_partitions(["2-0", "10-0", "1-1", "1-0", "10-1"]) == [
        "1-0", "1-1", "10-0", "10-1", "2-0"]


def test_producer_numeric_order_is_the_other_one() -> None:
    raw = ["0-10", "0-2", "10-0", "2-0", "1-11", "1-3"]
    assert sorted(raw, key=partition_numeric_key) == ["0-2", "0-10", "1-3", "1-11", "2-0", "10-0"]
    assert partition_numeric_key("3-7") == (3, 7)
    with pytest.raises(ValueError):
        partition_numeric_key("3")
    with pytest.raises(ValueError):
        partition_numeric_key("x-1")
    with pytest.raises(ValueError):
        partition_numeric_key("2147483648-0")  # beyond Java's int


def test_consumers_sort_as_java_strings() -> None:
    # Plain code-unit order: digits < uppercase < "_" < lowercase; "g_10" < "g_9"; a prefix first.
    raw = ["g_b", "g_a", "g_B", "g_10", "g_9", "g_1", "g_", "g_a"]
    assert sort_consumers(raw) == ["g_", "g_1", "g_10", "g_9", "g_B", "g_a", "g_a", "g_b"]


def test_java_compares_utf16_code_units_not_code_points() -> None:
    # U+10000 is the surrogate pair D800 DC00 in Java: it sorts BEFORE U+FFFF (and U+E000).
    high, bmp_top, private = "g_\U00010000", "g_\uffff", "g_\ue000"
    assert sorted([bmp_top, high]) == [bmp_top, high]               # Python: code points
    assert java_sorted([bmp_top, private, high]) == [high, private, bmp_top]  # Java: code units
    assert java_string_key("a") < java_string_key("ab") < java_string_key("b")
    # A pair spelled as two code points is the same Java string as the real character.
    assert java_string_key("\ud800\udc00") == java_string_key("\U00010000")


def test_java_utf8_bytes() -> None:
    assert java_utf8("g_a-0") == b"g_a-0"
    assert java_utf8("组-é") == "组-é".encode("utf-8")
    assert java_utf8("\ud83d\ude00") == "\U0001F600".encode("utf-8")  # joined pair
    assert java_utf8("a\ud800b") == b"a?b"                            # lone surrogate → '?'


# ====================================================================== inputs (§4.1, §3.3)


def test_partition_strings_from_topics_sub_children() -> None:
    children = {
        "1-m": 3, "1-s0": 5,  # master and slave of broker 1: merged, the slave's extra ones too
        "10-m": 2,
        "2-m": 0,             # no partitions
        "junk": 4,            # one token: skipped
        "3-s-1": 4,           # three tokens: skipped
    }
    assert partition_strings(children) == [
        "1-0", "1-1", "1-2", "1-3", "1-4", "10-0", "10-1"]


def test_partition_strings_split_like_commons_lang() -> None:
    # StringUtils.split(name, "-"): runs of "-" are one separator, edges ignored; the first token
    # is used verbatim and the suffix is not checked — Java consumers include these, so must we.
    assert partition_strings({"4--m": 1, "-5-m": 1, "007-x": 1}) == ["007-0", "4-0", "5-0"]


def test_registration_topics_is_java_split() -> None:
    assert registration_topics("t1,t2") == ["t1", "t2"]
    assert registration_topics("t1") == ["t1"]
    assert registration_topics("") == []
    assert registration_topics(" \t") == []
    assert registration_topics("t1,,t2,,") == ["t1", "", "t2"]  # trailing empties dropped
    assert registration_topics(",t1") == ["", "t1"]
    assert registration_topics(",,") == []
    assert registration_topics("\u00a0") == ["\u00a0"]  # no-break space is not Java whitespace


def test_consumers_for_topic() -> None:
    regs = {"g_c": "t1,t2", "g_a": "t2", "g_b": "t1", "g_d": "", "g_e": "t1,t1"}
    assert consumers_for_topic(regs, "t1") == ["g_b", "g_c", "g_e", "g_e"]  # as Java: twice
    assert consumers_for_topic(regs, "t2") == ["g_a", "g_c"]
    assert consumers_for_topic(regs, "t3") == []


# ================================================================================ DEFAULT


def test_spec_example_4_2_literally() -> None:
    partitions = ["0-0", "0-1", "0-2", "1-0", "1-1", "1-2"]
    consumers = ["g_a", "g_b", "g_c", "g_d"]
    assert default_assignment("g_a", consumers, partitions) == ["0-0", "0-1"]
    assert default_assignment("g_b", consumers, partitions) == ["0-2", "1-0"]
    assert default_assignment("g_c", consumers, partitions) == ["1-1"]
    assert default_assignment("g_d", consumers, partitions) == ["1-2"]


P12 = [f"0-{i}" for i in range(12)]  # string order: 0-0 0-1 0-10 0-11 0-2 … 0-9

# (consumers, partitions, expected per consumer in order). Arithmetic in the comments:
# base, extra = divmod(P, C); consumer k starts at base*k + min(k, extra) and takes
# base + (k < extra). Rows marked "Java says" were also run through the Java code.
DEFAULT_CASES = [
    pytest.param(  # P=2 < C=4: base 0, extra 2 → k0 [0,1), k1 [1,2), k2/k3 take 0
        ["g_a", "g_b", "g_c", "g_d"], ["0-0", "0-1"],
        [["0-0"], ["0-1"], [], []], id="more-consumers-than-partitions"),
    pytest.param(  # P=C=3: base 1, extra 0
        ["g_a", "g_b", "g_c"], ["0-0", "0-1", "0-2"],
        [["0-0"], ["0-1"], ["0-2"]], id="equal"),
    pytest.param(  # P=1, C=1
        ["g_a"], ["5-0"], [["5-0"]], id="single"),
    pytest.param(  # P=12, C=5: base 2, extra 2 → starts 0,3,6,8,10; sizes 3,3,2,2,2 (Java says)
        ["g_a", "g_b", "g_c", "g_d", "g_e"], P12,
        [["0-0", "0-1", "0-10"], ["0-11", "0-2", "0-3"], ["0-4", "0-5"], ["0-6", "0-7"],
         ["0-8", "0-9"]], id="remainder-goes-to-the-first-consumers-and-0-10-before-0-2"),
    pytest.param(  # P=12, C=12: each one, in string order
        [f"g_{c}" for c in "abcdefghijkl"], P12,
        [[p] for p in sort_partitions(P12)], id="0-10-is-the-third-partition"),
    pytest.param(  # 3 brokers × 2, C=4: base 1, extra 2 → sizes 2,2,1,1 (Java says)
        ["g_a", "g_b", "g_c", "g_d"], ["1-0", "1-1", "2-0", "2-1", "10-0", "10-1"],
        [["1-0", "1-1"], ["10-0", "10-1"], ["2-0"], ["2-1"]], id="multiple-brokers-10-before-2"),
    pytest.param(  # P=7, C=3: base 2, extra 1 → starts 0,3,5; sizes 3,2,2
        ["g_x", "g_y", "g_z"], ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1", "1-2"],
        [["0-0", "0-1", "0-2"], ["0-3", "1-0"], ["1-1", "1-2"]], id="uneven-7-over-3"),
    pytest.param(  # P=10, C=4: base 2, extra 2 → sizes 3,3,2,2 (Java's DefaultStrategyUnitTest)
        [f"consumer-{i}" for i in range(4)], [f"test-{i}" for i in range(10)],
        [["test-0", "test-1", "test-2"], ["test-3", "test-4", "test-5"], ["test-6", "test-7"],
         ["test-8", "test-9"]], id="java-unit-test-4x10"),
    pytest.param(  # P=10, C=3: base 3, extra 1 → sizes 4,3,3 (Java's DefaultStrategyUnitTest)
        [f"consumer-{i}" for i in range(3)], [f"test-{i}" for i in range(10)],
        [["test-0", "test-1", "test-2", "test-3"], ["test-4", "test-5", "test-6"],
         ["test-7", "test-8", "test-9"]], id="java-unit-test-3x10"),
    pytest.param(  # consumer order is string order: g_10 < g_2 < g_B < g_a
        ["g_a", "g_2", "g_B", "g_10"], ["0-0", "0-1", "0-2", "0-3", "0-4"],
        [["0-0", "0-1"], ["0-2"], ["0-3"], ["0-4"]], id="consumers-in-string-order"),
]


@pytest.mark.parametrize("consumers, partitions, expected", DEFAULT_CASES)
def test_default_table(consumers: list[str], partitions: list[str],
                       expected: list[list[str]]) -> None:
    ordered = sort_consumers(consumers)
    got = [default_assignment(c, consumers, partitions) for c in ordered]
    assert got == expected
    assert full_assignment(Strategy.DEFAULT, consumers, partitions) == dict(zip(ordered, expected))
    # Input order does not matter: the lists are put in Java order first.
    assert [default_assignment(c, consumers[::-1], partitions[::-1]) for c in ordered] == expected


def test_default_edge_cases() -> None:
    assert default_assignment("g_x", ["g_a", "g_b"], ["0-0", "0-1"]) == []  # not a consumer
    assert default_assignment("consumer-100", [f"consumer-{i}" for i in range(4)],
                              [f"test-{i}" for i in range(10)]) == []  # Java unit test
    assert default_assignment("g_a", ["g_a"], []) == []
    assert default_assignment("g_a", [], ["0-0"]) == []  # Java would divide by zero
    assert default_assignment("g_a", ["g_a"], ["0-1", "0-0", "0-1"]) == ["0-0", "0-1"]


def test_default_duplicate_consumer_behaves_like_java_index_of() -> None:
    # A registration naming the topic twice puts its consumer twice in Java's list: C counts it
    # twice and indexOf finds the first — the second slot is then nobody's. (Java does this too.)
    consumers = consumers_for_topic({"g_a": "t,t", "g_b": "t"}, "t")
    assert consumers == ["g_a", "g_a", "g_b"]
    partitions = ["0-0", "0-1", "0-2"]
    assert default_assignment("g_a", consumers, partitions) == ["0-0"]
    assert default_assignment("g_b", consumers, partitions) == ["0-2"]


# ================================================================================ CONSIST


def _md5(text: str) -> bytes:
    return hashlib.md5(text.encode("utf-8")).digest()


def test_ketama_hash_of_a_partition_by_hand() -> None:
    # MD5("0-0") = c7 76 32 03 | e2 0a 64 b2 | 70 35 27 52 | d6 a1 e7 c6
    digest = _md5("0-0")
    assert digest.hex() == "c7763203e20a64b270352752d6a1e7c6"
    # Java: (d[3]&0xFF)<<24 | (d[2]&0xFF)<<16 | (d[1]&0xFF)<<8 | d[0]&0xFF — little-endian:
    #   0x03<<24 = 50331648, 0x32<<16 = 3276800, 0x76<<8 = 30208, 0xc7 = 199
    assert 50331648 + 3276800 + 30208 + 199 == 53638855 == 0x033276C7
    assert ketama_hash("0-0") == 53638855
    assert ketama_hash("0-0") == struct.unpack("<I", digest[:4])[0]


def test_ring_points_by_hand() -> None:
    # MD5("g_a-0") = 53 1f 8c 43 | 5f 8b 37 9f | ce 73 b6 08 | 79 0a 73 79
    digest = _md5("g_a-0")
    assert digest.hex() == "531f8c435f8b379fce73b608790a7379"
    points = ring_points("g_a")
    assert len(points) == NUM_REPS == 160
    assert points[:4] == [0x438C1F53, 0x9F378B5F, 0x08B673CE, 0x79730A79]
    assert points[:4] == [1133256531, 2671217503, 146174926, 2037582457]
    # 0x9f is a negative Java byte; "& 0xFF" and the long make the point unsigned (> int max).
    assert points[1] > 2**31 - 1
    # Points 4…7 come from "g_a-1", …, 156…159 from "g_a-39" (no padding of i).
    assert points[4:8] == list(struct.unpack("<4I", _md5("g_a-1")))
    assert points[156:] == list(struct.unpack("<4I", _md5("g_a-39")))


def _reference_owner(consumers: list[str], partition: str) -> str | None:
    """Brute force: rebuild the TreeMap as a dict (later put wins), then scan linearly."""
    ring: dict[int, str] = {}
    for consumer in sorted(consumers, key=lambda s: s.encode("utf-16-be", "surrogatepass")):
        for i in range(40):
            for point in struct.unpack("<4I", _md5(f"{consumer}-{i}")):
                ring[point] = consumer
    if not ring:
        return None
    key = struct.unpack("<I", _md5(partition)[:4])[0]
    at_or_above = [p for p in ring if p >= key]
    return ring[min(at_or_above) if at_or_above else min(ring)]


PARTS_2x6 = [f"{b}-{p}" for b in (0, 1) for p in range(6)]


def test_consist_golden_three_consumers() -> None:
    # Java says (ConsisHashStrategy, consumers g_a g_b g_c, partitions 0-0…0-5, 1-0…1-5):
    expected = {
        "g_a": ["0-1", "0-2", "0-3", "1-0", "1-1", "1-2", "1-4"],
        "g_b": ["0-0", "0-4"],
        "g_c": ["0-5", "1-3", "1-5"],
    }
    consumers = ["g_c", "g_a", "g_b"]
    for consumer, mine in expected.items():
        assert consistent_hash_assignment(consumer, consumers, PARTS_2x6) == mine
        assert all(_reference_owner(consumers, p) == consumer for p in mine)
    assert full_assignment("CONSIST", consumers, PARTS_2x6) == expected


def test_consist_stability_adding_a_consumer_moves_only_to_it() -> None:
    # Java says, for g_a g_b only; then g_c joins (previous test) and takes 0-5, 1-3, 1-5 — all
    # from g_a. Nothing moves between g_a and g_b.
    before = full_assignment(Strategy.CONSIST, ["g_a", "g_b"], PARTS_2x6)
    assert before == {
        "g_a": ["0-1", "0-2", "0-3", "0-5", "1-0", "1-1", "1-2", "1-3", "1-4", "1-5"],
        "g_b": ["0-0", "0-4"],
    }
    after = full_assignment(Strategy.CONSIST, ["g_a", "g_b", "g_c"], PARTS_2x6)
    moved = {p for c in before for p in before[c] if p not in after[c]}
    assert moved == {"0-5", "1-3", "1-5"} == set(after["g_c"])


def test_consist_stability_many_partitions() -> None:
    consumers = [f"grp_host{i}-1700000000000-{i}" for i in range(1, 6)]
    partitions = [f"{b}-{p}" for b in range(4) for p in range(25)]
    newcomer = "grp_host9-1700000000000-9"
    before = full_assignment(Strategy.CONSIST, consumers, partitions)
    after = full_assignment(Strategy.CONSIST, consumers + [newcomer], partitions)
    owner_before = {p: c for c, ps in before.items() for p in ps}
    owner_after = {p: c for c, ps in after.items() for p in ps}
    moved = [p for p in partitions if owner_before[p] != owner_after[p]]
    assert moved and all(owner_after[p] == newcomer for p in moved)
    assert len(moved) < len(partitions) // 2  # "only some": DEFAULT would move far more
    default_before = full_assignment(Strategy.DEFAULT, consumers, partitions)
    default_after = full_assignment(Strategy.DEFAULT, consumers + [newcomer], partitions)
    default_moved = sum(p not in default_after[c] for c, ps in default_before.items() for p in ps)
    assert default_moved > len(moved)


# A real collision: the consumers g_c541 and g_c646 both produce ring point 3393254181
# (found by searching "g_c<n>"); "0-363" hashes to 3393100879, just below it, so its owner is
# whoever owns that point.
COLLIDING = ("g_c541", "g_c646")
COLLISION_POINT = 3393254181


def test_ring_collision_later_consumer_wins() -> None:
    first, second = COLLIDING
    assert COLLISION_POINT in ring_points(first)
    assert COLLISION_POINT in ring_points(second)
    assert java_sorted([second, first]) == [first, second]
    for given_order in (list(COLLIDING), list(COLLIDING[::-1])):
        ring = HashRing.build(given_order)
        # 320 puts, one key shared: 319 points, and TreeMap.put gave it to the later consumer.
        assert len(ring.points) == 2 * NUM_REPS - 1
        assert ring.owners[ring.points.index(COLLISION_POINT)] == second
        assert ring.owner_of_hash(COLLISION_POINT) == second  # containsKey: exact hit
        # "0-363" lands on that point (every point between is above it):
        index = ring.points.index(COLLISION_POINT)
        assert ring.points[index - 1] < ketama_hash("0-363") == 3393100879 <= COLLISION_POINT
        assert ring.owner_of("0-363") == second
        assert consistent_hash_assignment(second, given_order, ["0-363"]) == ["0-363"]
        assert consistent_hash_assignment(first, given_order, ["0-363"]) == []
    assert _reference_owner(list(COLLIDING), "0-363") == second
    # Java says: g_c541=[0-117], g_c646=[0-363].
    assert full_assignment("CONSIST", COLLIDING, ["0-363", "0-117"]) == {
        "g_c541": ["0-117"], "g_c646": ["0-363"]}


def test_ring_collision_simulated_with_a_hand_built_ring() -> None:
    # The same rule on a tiny ring: the later put replaces the owner, the key count stays.
    ring: dict[int, str] = {}
    for consumer, points in (("g_a", [10, 20]), ("g_b", [20, 30])):
        for point in points:
            ring[point] = consumer
    hand = HashRing(tuple(sorted(ring)), tuple(ring[p] for p in sorted(ring)))
    assert hand.points == (10, 20, 30) and hand.owners == ("g_a", "g_b", "g_b")
    assert [hand.owner_of_hash(h) for h in (0, 10, 11, 20, 21, 30, 31, 2**32 - 1)] == [
        "g_a", "g_a", "g_b", "g_b", "g_b", "g_b", "g_a", "g_a"]


def test_wrap_around_goes_to_the_smallest_point() -> None:
    consumers = ["g_a", "g_b", "g_c"]
    ring = HashRing.build(consumers)
    # "0-117" hashes above every point of the ring: ceilingKey is null → firstKey.
    assert ketama_hash("0-117") == 4292850440
    assert max(ring.points) == 4281654098 < 4292850440
    assert ring.owners[-1] == "g_c"                     # the last point is g_c's …
    assert min(ring.points) == 1762035 and ring.owners[0] == "g_a"  # … the first is g_a's
    assert ring.owner_of("0-117") == "g_a"
    assert consistent_hash_assignment("g_a", consumers, ["0-117"]) == ["0-117"]  # Java says
    assert consistent_hash_assignment("g_c", consumers, ["0-117"]) == []
    assert _reference_owner(consumers, "0-117") == "g_a"


def test_consist_edge_cases() -> None:
    assert consistent_hash_assignment("g_x", ["g_a", "g_b"], PARTS_2x6) == []
    assert consistent_hash_assignment("g_a", [], PARTS_2x6) == []
    assert consistent_hash_assignment("g_a", ["g_a"], []) == []
    assert consistent_hash_assignment("g_a", ["g_a"], ["0-1", "0-0", "0-1"]) == ["0-0", "0-1"]
    assert HashRing.build([]).owner_of("0-0") is None
    assert full_assignment(Strategy.CONSIST, [], PARTS_2x6) == {}


def test_consist_non_ascii_ids_hash_their_utf8_bytes() -> None:
    consumers = ["组_机器-1", "组_机器-2", "组_\U0001F600"]
    for partition in PARTS_2x6:
        assert HashRing.build(consumers).owner_of(partition) == _reference_owner(consumers,
                                                                                 partition)


# =============================================================================== strategies


def test_strategy_lookup_by_java_name() -> None:
    assert Strategy.from_name("DEFAULT") is Strategy.DEFAULT
    assert Strategy.from_name("CONSIST") is Strategy.CONSIST
    assert [s.value for s in Strategy] == ["DEFAULT", "CONSIST"]
    for bad in ("default", "Consist", "CONSISTENT", ""):
        with pytest.raises(ValueError):
            Strategy.from_name(bad)
    consumers, partitions = ["g_a", "g_b"], PARTS_2x6
    assert assignment("DEFAULT", "g_b", consumers, partitions) == default_assignment(
        "g_b", consumers, partitions)
    assert assignment(Strategy.CONSIST, "g_b", consumers, partitions) == ["0-0", "0-4"]
    assert Strategy.DEFAULT.assign("g_a", consumers, partitions) == [
        "0-0", "0-1", "0-2", "0-3", "0-4", "0-5"]
    with pytest.raises(ValueError):
        assignment("ROUND_ROBIN", "g_a", consumers, partitions)


# =============================================================================== properties

consumer_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=",/"),
    min_size=1, max_size=12,
).map(lambda s: "g_" + s)
consumer_lists = st.lists(consumer_ids, min_size=1, max_size=12, unique=True)
partition_lists = st.dictionaries(
    st.integers(min_value=0, max_value=200), st.integers(min_value=1, max_value=20),
    min_size=1, max_size=5,
).map(lambda brokers: [f"{b}-{p}" for b, n in brokers.items() for p in range(n)])


@settings(max_examples=300, deadline=None)
@given(consumers=consumer_lists, partitions=partition_lists)
def test_default_every_partition_has_one_owner_and_sizes_differ_by_at_most_one(
        consumers: list[str], partitions: list[str]) -> None:
    result = full_assignment(Strategy.DEFAULT, consumers, partitions)
    assert list(result) == sort_consumers(consumers)
    owned = [p for mine in result.values() for p in mine]
    # Exactly one owner each, and concatenating the ranges in consumer order is the list itself.
    assert owned == sort_partitions(partitions)
    sizes = [len(mine) for mine in result.values()]
    assert max(sizes) - min(sizes) <= 1
    # The bigger ranges come first (the first P % C consumers get the extra partition).
    assert sizes == sorted(sizes, reverse=True)


@settings(max_examples=150, deadline=None)
@given(consumers=consumer_lists, partitions=partition_lists)
def test_consist_every_partition_has_one_owner(consumers: list[str],
                                               partitions: list[str]) -> None:
    result = full_assignment(Strategy.CONSIST, consumers, partitions)
    owned = sorted(p for mine in result.values() for p in mine)
    assert owned == sorted(set(partitions))
    for consumer, mine in result.items():
        assert consistent_hash_assignment(consumer, consumers[::-1], partitions) == mine


@settings(max_examples=40, deadline=None)
@given(consumers=consumer_lists, partitions=partition_lists)
def test_consist_matches_brute_force_reference(consumers: list[str],
                                               partitions: list[str]) -> None:
    ring = HashRing.build(consumers)
    for partition in partitions:
        assert ring.owner_of(partition) == _reference_owner(consumers, partition)


@settings(max_examples=60, deadline=None)
@given(consumers=consumer_lists, newcomer=consumer_ids, partitions=partition_lists)
def test_consist_adding_a_consumer_only_moves_partitions_to_it(
        consumers: list[str], newcomer: str, partitions: list[str]) -> None:
    if newcomer in consumers:
        return
    before = HashRing.build(consumers)
    after = HashRing.build(consumers + [newcomer])
    for partition in partitions:
        owner = after.owner_of(partition)
        assert owner == before.owner_of(partition) or owner == newcomer
