"""The record codec (protocol §4): the compiled module against its pure-Python twin and the spec."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaq_core import _crc, _record, record_py
from metaq_core.errors import InvalidMessageError

CODECS = [pytest.param(_record, id="cython"), pytest.param(record_py, id="python")]


def test_checksum_example_from_the_spec():
    assert zlib.crc32(b"test") == 0xD87F7E0C
    assert _crc.checksum(b"test") == 1484750348 == record_py.checksum(b"test")
    assert _crc.crc32_of(b"test") == 0xD87F7E0C


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 1 << 20])
def test_checksum_matches_zlib_on_any_size(size):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert _crc.checksum(data) == zlib.crc32(data) & 0x7FFFFFFF
    assert _crc.checksum(memoryview(data)) == _crc.checksum(bytearray(data))


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.integers(0, 15), st.integers(0, 2**32 - 1))
def test_checksum_matches_zlib_at_any_length_and_alignment(data, skip, seed):
    # the carry-less multiplication path takes 64 bytes and more, in 16-byte blocks; zlib the rest
    data = seed.to_bytes(4, "little") + data
    view = memoryview(data)[skip:]
    assert _crc.crc32_of(view) == zlib.crc32(view)
    assert _crc.implementation in ("pclmul", "zlib")


@pytest.mark.parametrize("attribute", [None, b"", b"k" * 70])
@pytest.mark.parametrize("size", [0, 15, 63, 64, 65, 1024, 5000])
def test_put_frame_checksum_sums_its_parts_in_turn(attribute, size):
    # the compiled put frame sums length prefix, attribute and body one after another
    put_frame = pytest.importorskip("metaq_core._client_codec").put_frame
    body = bytes((i * 7 + size) & 0xFF for i in range(size))
    frame = put_frame(b"t", 0, body, attribute, 1)
    header, data = frame.split(b"\r\n", 1)
    data = data if attribute is None else struct.pack(">i", len(attribute)) + attribute + body
    assert frame.endswith(data)
    assert int(header.split()[5]) == zlib.crc32(data) & 0x7FFFFFFF


@pytest.mark.parametrize("codec", CODECS)
def test_worked_example_hello_with_attribute(codec):
    # protocol §7.1: data = attr_len 5, "attr1", "hello"
    flag, data = codec.make_data(b"hello", "attr1")
    assert flag == 1
    assert data == b"\x00\x00\x00\x05attr1hello"
    rec = codec.encode_record(7, flag, data)
    assert rec[:4] == struct.pack(">i", 14)
    assert rec[4:8] == struct.pack(">i", zlib.crc32(data) & 0x7FFFFFFF)
    assert rec[8:16] == struct.pack(">q", 7)
    assert rec[16:20] == struct.pack(">i", 1)
    assert rec[20:] == data
    assert codec.split_data(flag, data) == ("attr1", b"hello")


@pytest.mark.parametrize("codec", CODECS)
def test_empty_attribute_and_empty_body(codec):
    flag, data = codec.make_data(b"", "")
    assert (flag, data) == (1, b"\x00\x00\x00\x00")
    assert codec.split_data(flag, data) == ("", b"")
    assert codec.make_data(b"", None) == (0, b"")
    assert codec.split_data(0, b"") == (None, b"")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("data", [b"", b"\x00\x00", b"\x00\x00\x00\x05abc", b"\xff\xff\xff\xffabcd"])
def test_malformed_attribute_block_is_refused(codec, data):
    with pytest.raises(InvalidMessageError):
        codec.check_data(1, data)
    with pytest.raises(InvalidMessageError):
        codec.split_data(1, data)


@pytest.mark.parametrize("codec", CODECS)
def test_attribute_not_utf8_is_refused(codec):
    with pytest.raises(InvalidMessageError):
        codec.split_data(1, b"\x00\x00\x00\x02\xff\xfebody")


@pytest.mark.parametrize("codec", CODECS)
def test_scan_statuses(codec):
    one = codec.encode_record(1, 0, b"abc")
    two = codec.encode_record(-2, 3, b"")
    assert codec.scan(one + two) == (2, len(one + two), codec.CLEAN)
    assert codec.scan(one + two[:-1]) == (1, len(one), codec.PARTIAL)
    assert codec.scan(one + b"\x00" * 10) == (1, len(one), codec.PARTIAL)
    bad = bytearray(one)
    bad[-1] ^= 1
    assert codec.scan(bytes(bad) + two) == (0, 0, codec.CORRUPT)
    assert codec.scan(bytes(bad), verify=False) == (1, len(one), codec.CLEAN)
    negative = struct.pack(">iiqi", -1, 0, 0, 0)
    assert codec.scan(one + negative) == (1, len(one), codec.CORRUPT)
    assert codec.scan(b"") == (0, 0, codec.CLEAN)


@pytest.mark.parametrize("codec", CODECS)
def test_decode_with_base_offset_and_range(codec):
    recs = [codec.encode_record(i, i & 1, bytes([i]) * i) for i in range(5)]
    buf = b"".join(recs)
    records, end, status = codec.decode(buf, 1000, len(recs[0]))
    assert status == codec.CLEAN and end == len(buf)
    assert [r[0] for r in records] == [1000 + len(b"".join(recs[:i])) for i in range(1, 5)]
    assert [(r[1], r[2], r[3]) for r in records] == [(i, i & 1, bytes([i]) * i) for i in range(1, 5)]
    with pytest.raises(ValueError):
        codec.decode(buf, 0, len(buf) + 1)


@pytest.mark.parametrize("codec", CODECS)
def test_decode_header_needs_twenty_bytes(codec):
    with pytest.raises(ValueError):
        codec.decode_header(b"\x00" * 19)
    assert codec.decode_header(codec.encode_record(-5, -1, b"xy")) == (
        2, zlib.crc32(b"xy") & 0x7FFFFFFF, -5, -1)


@given(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**31), 2**31 - 1), st.binary(max_size=300),
       st.one_of(st.none(), st.text(max_size=20)))
def test_compiled_and_pure_encode_identically(msg_id, flag, body, attribute):
    assert _record.make_data(body, attribute) == record_py.make_data(body, attribute)
    f2, data = record_py.make_data(body, attribute)
    rec = _record.encode_record(msg_id, flag, data)
    assert rec == record_py.encode_record(msg_id, flag, data)
    assert _record.encode_header(msg_id, flag, data) == rec[:20]
    assert _record.decode(rec, 5) == record_py.decode(rec, 5)
    assert _record.split_data(f2, data) == record_py.split_data(f2, data) == (attribute, body)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(0, 64), st.booleans())
def test_garbage_never_crashes_and_both_agree(garbage, start, verify):
    start = min(start, len(garbage))
    assert _record.scan(garbage, start, -1, verify) == record_py.scan(garbage, start, -1, verify)
    assert _record.decode(garbage, 9, start, -1, verify) == record_py.decode(garbage, 9, start, -1, verify)
    for flag in (0, 1):
        outcomes = []
        for codec in (_record, record_py):
            try:
                outcomes.append(("ok", codec.split_data(flag, garbage)))
            except InvalidMessageError:
                outcomes.append(("error", None))
        assert outcomes[0] == outcomes[1]


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=8), st.data())
def test_valid_sets_with_a_cut_tail(bodies, data):
    buf = b"".join(_record.encode_record(i, 0, b) for i, b in enumerate(bodies))
    cut = data.draw(st.integers(0, len(buf)))
    count, end, status = _record.scan(buf[:cut])
    assert (count, end, status) == record_py.scan(buf[:cut])
    boundaries = [0]
    for b in bodies:
        boundaries.append(boundaries[-1] + 20 + len(b))
    expected_end = max(x for x in boundaries if x <= cut)
    assert end == expected_end and count == boundaries.index(expected_end)
    assert status == (_record.CLEAN if cut == expected_end else _record.PARTIAL)
