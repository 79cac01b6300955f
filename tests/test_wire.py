"""The sans-I/O wire codec (protocol §2–§5, §7): both decoders against the spec's bytes, against
each other on random input and random chunking, and the encoders byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaq_core import _wire, wire_py
from metaq_core.frames import (
    Get, OffsetRequest, Put, Quit, RemoteProtocolError, Result, Stats, Sync, Transaction, Value,
    Version, encode, encode_result, encode_value_header, LocalProtocolError,
)

DECODERS = [pytest.param(_wire.FrameDecoder, id="cython"), pytest.param(wire_py.FrameDecoder, id="python")]

HELLO_DATA = b"\x00\x00\x00\x05attr1hello"


def decode_all(cls, data, **kw):
    decoder = cls(**kw)
    decoder.receive_data(data)
    return decoder.events()


def decode_bytewise(cls, data, **kw):
    decoder = cls(**kw)
    out = []
    for i in range(len(data)):
        decoder.receive_data(data[i:i + 1])
        out += decoder.events()
    return out


# ------------------------------------------------------------------- the worked examples (§7)


@pytest.mark.parametrize("cls", DECODERS)
def test_put_hello_with_attribute(cls):
    raw = bytes.fromhex(
        "707574207465737420302031342031203136303232323130333320310d0a0000000561747472316865"
        "6c6c6f")
    assert raw == b"put test 0 14 1 1602221033 1\r\n" + HELLO_DATA
    expected = Put("test", 0, 1, 1602221033, None, 1, HELLO_DATA, 14)
    assert decode_all(cls, raw) == [expected] == decode_bytewise(cls, raw)
    assert encode(expected) == raw


@pytest.mark.parametrize("cls", DECODERS)
def test_put_response_and_pre_144_form(cls):
    response = b"result 200 22 1\r\n246735974682333184 0 0"
    assert encode_result(200, "246735974682333184 0 0", 1) == response
    assert decode_all(cls, response) == [Result(200, b"246735974682333184 0 0", 1)]
    old = b"put test 0 14 1 1\r\n" + HELLO_DATA
    assert decode_all(cls, old) == [Put("test", 0, 1, -1, None, 1, HELLO_DATA, 14)]


@pytest.mark.parametrize("cls", DECODERS)
def test_transactional_put_forms(cls):
    key = "TX:10.0.0.5-1362722101000-1:1"
    new = f"put test 0 5 0 980881731 {key} 9\r\nworld".encode()
    old = f"put test 0 5 0 {key} 9\r\nworld".encode()
    assert decode_all(cls, new) == [Put("test", 0, 0, 980881731, key, 9, b"world", 5)]
    assert decode_all(cls, old) == [Put("test", 0, 0, -1, key, 9, b"world", 5)]
    assert encode(Put("test", 0, 0, 980881731, key, 9, b"world")) == new
    assert encode(Put("test", 0, 0, -1, key, 9, b"world")) == old


@pytest.mark.parametrize("cls", DECODERS)
def test_get_value_and_partial(cls):
    assert decode_all(cls, b"get test group1 0 0 1048576 3\r\n") == [Get("test", "group1", 0, 0, 1048576, 3)]
    body = bytes(range(59))
    frame = b"value 59 3\r\n" + body
    assert encode_value_header(59, 3) + body == frame == encode(Value(body, 3))
    assert decode_all(cls, frame) == [Value(body, 3)]
    assert decode_all(cls, frame[:-1]) == []
    miss = b"result 404 37 5\r\nCould not find message at position 59"
    assert decode_all(cls, miss) == [Result(404, b"Could not find message at position 59", 5)]


@pytest.mark.parametrize("cls", DECODERS)
def test_offset_sync_version_stats_quit(cls):
    assert decode_all(cls, b"offset test group1 0 10 6\r\n") == [OffsetRequest("test", "group1", 0, 10, 6)]
    sync = b"sync test 0 14 1 246735974682333184 1602221033 7\r\n" + HELLO_DATA
    assert decode_all(cls, sync) == [Sync("test", 0, 1, 246735974682333184, 1602221033, 7, HELLO_DATA, 14)]
    assert encode(Sync("test", 0, 1, 246735974682333184, 1602221033, 7, HELLO_DATA)) == sync
    old_sync = b"sync test 0 14 1 246735974682333184 7\r\n" + HELLO_DATA
    assert decode_all(cls, old_sync) == [Sync("test", 0, 1, 246735974682333184, -1, 7, HELLO_DATA, 14)]
    assert decode_all(cls, b"version 14\r\nversion\r\n") == [Version(14), Version(2147483647)]
    assert decode_all(cls, b"stats offsets 13\r\nstats reset\r\nstats\r\nstats  12\r\nstats 5\r\n") == [
        Stats("offsets", 13), Stats("reset", 2147483647), Stats("", 2147483647), Stats("", 12),
        Stats("5", 2147483647)]
    assert encode(Stats("", 12)) == b"stats  12\r\n"
    assert decode_all(cls, b"quit\r\n") == [Quit()]
    assert encode(Quit()) == b"quit\r\n"


@pytest.mark.parametrize("cls", DECODERS)
def test_transaction_forms(cls):
    lines = {
        b"transaction TX:10.0.0.5-1362722101000-1:1 10.0.0.5-1362722101000-1 BEGIN 8\r\n":
            Transaction("TX:10.0.0.5-1362722101000-1:1", "10.0.0.5-1362722101000-1", "BEGIN", 0, None, 8),
        b"transaction XID:1:0a0b:01:XAMessageProducer-host1 s BEGIN 30 XAMessageProducer-host1 11\r\n":
            Transaction("XID:1:0a0b:01:XAMessageProducer-host1", "s", "BEGIN", 30, "XAMessageProducer-host1", 11),
        b"transaction XID:1:0a0b:01 s BEGIN 30 11\r\n": Transaction("XID:1:0a0b:01", "s", "BEGIN", 30, None, 11),
        b"transaction XID:1:: s PREPARE uq 12\r\n": Transaction("XID:1::", "s", "PREPARE", 0, "uq", 12),
        b"transaction null s RECOVER 1\r\n": Transaction("null", "s", "RECOVER", 0, None, 1),
    }
    for raw, event in lines.items():
        assert decode_all(cls, raw) == [event]
        assert encode(event) == raw


@pytest.mark.parametrize("cls", DECODERS)
def test_pipelined_frames_in_any_chunking(cls):
    frames = [Put("t", i % 3, 0, -1, None, -2147483648 + i, b"x" * i) for i in range(50)]
    frames += [Get("t", "g", 1, 2**40, 1024, 5), Version(7), Stats("topics", 8), Quit()]
    stream = b"".join(encode(f) for f in frames)
    assert decode_all(cls, stream) == frames
    assert decode_bytewise(cls, stream) == frames


# ------------------------------------------------------------------------- malformed input


BAD_LINES = [
    b"\r\n", b" put t 0 1 0 1\r\nx", b"pat t 0 1 0 1\r\nx", b"xyz\r\n", b"get t g 0 0 100\r\n",
    b"get t g x 0 100 1\r\n", b"get t g 0 0 100 2147483648\r\n", b"get t g 0 9223372036854775808 1 1\r\n",
    b"put t 0 -1 0 1\r\n", b"put t 0 1 0 1 2 3 4\r\nx", b"put t 0 1 0\r\n", b"put t 0 1x 0 1\r\n",
    b"offset t g 0 1\r\n", b"sync t 0 1 0 1\r\nx", b"transaction TX:a:1 s WHATEVER 1\r\n",
    b"transaction BAD:key s BEGIN 1\r\n", b"transaction TX:a:b s BEGIN 1\r\n",
    b"transaction XID:1:zz:01 s BEGIN 1\r\n", b"transaction TX:a:1 s\r\n", b"versio 1\r\n",
    b"quitting\r\n", b"results 200 0 1\r\n", b"result 200 -5 1\r\n", b"value -1 1\r\n", b"get t g 0 0 1 +\r\n",
    b"get t g 0 0 1 --1\r\n", b"get t g 0 0 1 \xff\r\n", b"get t\xff g 0 0 1 1\r\n", b"stats x y\r\n",
    b"version 0x10\r\n", b"get t g 0 0 1 1\xd9\xa1\r\n",
]


@pytest.mark.parametrize("cls", DECODERS)
@pytest.mark.parametrize("line", BAD_LINES)
def test_malformed_lines_are_remote_protocol_errors(cls, line):
    with pytest.raises(RemoteProtocolError):
        decode_all(cls, line)


@pytest.mark.parametrize("cls", DECODERS)
def test_header_line_limit(cls):
    decoder = cls(max_header=1024)
    decoder.receive_data(b"p" * 1024)
    assert decoder.next_event() is None
    decoder.receive_data(b"p")
    with pytest.raises(RemoteProtocolError):
        decoder.next_event()


@pytest.mark.parametrize("cls", DECODERS)
def test_huge_announced_body_is_not_allocated(cls):
    decoder = cls(max_body=1024)
    decoder.receive_data(b"put t 0 2000000000 0 -1 1\r\n")
    assert decoder.next_event() is None
    for _ in range(100):
        decoder.receive_data(b"z" * 10_000)
        assert decoder.next_event() is None
        assert decoder.buffered <= 10_000  # skipped as it arrives, never accumulated
    # A body over max_body is skipped; the event says so with data=None.
    small = cls(max_body=4)
    small.receive_data(b"put t 0 5 0 -1 1\r\nabcdeversion 2\r\n")
    assert small.events() == [Put("t", 0, 0, -1, None, 1, None, 5), Version(2)]


@pytest.mark.parametrize("cls", DECODERS)
@pytest.mark.parametrize("length,max_body", [(40, 10), (300, 10), (40, 1000)])
def test_body_split_from_its_header_across_receives(cls, length, max_body):
    # header and the first body bytes arrive in separate receives before any next_event()
    decoder = cls(max_body=max_body)
    decoder.receive_data(b"put test 0 %d 0 -1 5\r\n" % length)
    fed = 0
    while True:
        decoder.receive_data(b"q" * 20)
        fed += 20
        events = decoder.events()
        if events:
            break
    assert fed == length
    assert events == [Put("test", 0, 0, -1, None, 5, None if length > max_body else b"q" * length)]


def test_encoders_refuse_what_the_wire_cannot_carry():
    with pytest.raises(LocalProtocolError):
        encode(Put("a b", 0, 0, -1, None, 1, b""))
    with pytest.raises(LocalProtocolError):
        encode(Get("t", "g", 2**31, 0, 1, 1))
    with pytest.raises(LocalProtocolError):
        encode(Transaction("TX:a:1", "s", "NOPE", 0, None, 1))


# ------------------------------------------------------------------ the two decoders agree


def outcome(cls, chunks, **kw):
    decoder = cls(**kw)
    events = []
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            events += decoder.events()
    except RemoteProtocolError:
        return events, "error"
    return events, decoder.buffered


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in pieces of the lengths in ``cuts``, and the rest as the last piece."""
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(data[pos:pos + cut])
        pos += cut
    chunks.append(data[pos:])
    return chunks


token = st.sampled_from([b"put", b"get", b"offset", b"sync", b"stats", b"version", b"quit", b"value",
                         b"result", b"transaction", b"t", b"g", b"0", b"-1", b"5", b"2147483648",
                         b"TX:s:1", b"XID:1:0a:", b"BEGIN", b"", b"abc", b"\xc3\xa9", b"+3", b"99999999999"])
line = st.lists(token, min_size=1, max_size=9).map(lambda ts: b" ".join(ts) + b"\r\n")
stream = st.lists(st.one_of(line, st.binary(max_size=12)), max_size=8).map(b"".join)


@settings(max_examples=400)
@given(stream, st.lists(st.integers(1, 16), max_size=10))
def test_compiled_and_pure_decoders_agree(data, cuts):
    chunks = split_at(data, cuts)
    expected = outcome(wire_py.FrameDecoder, chunks, max_body=8)
    assert outcome(_wire.FrameDecoder, chunks, max_body=8) == expected
    assert outcome(_wire.FrameDecoder, [data], max_body=8) == outcome(wire_py.FrameDecoder, [data], max_body=8)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_garbage_never_crashes(data):
    # Any input ends in events or a RemoteProtocolError, never in another exception.
    kinds = (Put, Get, OffsetRequest, Sync, Transaction, Stats, Version, Quit, Result, Value)
    for cls in (_wire.FrameDecoder, wire_py.FrameDecoder):
        events, rest = outcome(cls, [data])
        assert all(isinstance(e, kinds) for e in events)
        assert rest == "error" or 0 <= rest <= len(data)


def outcome_reading_puts_in_place(chunks, **kw):
    """As ``outcome`` for the compiled decoder, taking plain puts with ``take_put`` first (the
    broker's put path reads them that way) and everything else with ``next_event``."""
    decoder = _wire.FrameDecoder(**kw)
    events = []
    try:
        for chunk in chunks:
            decoder.receive_data(chunk)
            these = []  # (``outcome`` keeps no event of a chunk that ends in an error)
            while True:
                put = decoder.take_put()
                if put is not None:
                    topic, partition, flag, checksum, opaque, data = put
                    try:
                        text = topic.decode()
                    except UnicodeDecodeError:  # the broker then lets next_event raise
                        raise RemoteProtocolError("header line is not valid UTF-8") from None
                    these.append(Put(text, partition, flag, checksum, None, opaque, data, len(data)))
                    continue
                event = decoder.next_event()
                if event is None:
                    break
                these.append(event)
            events += these
    except RemoteProtocolError:
        return events, "error"
    return events, decoder.buffered


plain_put = st.builds(
    lambda topic, partition, flag, checksum, opaque, body: encode(
        Put(topic, partition, flag, checksum, None, opaque, body)),
    st.sampled_from(["t", "test", "é"]), st.integers(-2, 3), st.integers(0, 3),
    st.one_of(st.just(-1), st.integers(0, 2**31 - 1)), st.integers(-2**31, 2**31 - 1),
    st.binary(max_size=12))
put_stream = st.lists(st.one_of(plain_put, line, st.binary(max_size=6)), max_size=8).map(b"".join)


@settings(max_examples=400)
@given(st.one_of(stream, put_stream), st.lists(st.integers(1, 16), max_size=10))
def test_reading_puts_in_place_gives_the_same_events(data, cuts):
    chunks = split_at(data, cuts)
    for max_body in (8, 1 << 20):
        expected = outcome(wire_py.FrameDecoder, chunks, max_body=max_body)
        assert outcome_reading_puts_in_place(chunks, max_body=max_body) == expected
