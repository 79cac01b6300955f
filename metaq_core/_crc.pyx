# cython: language_level=3
"""CRC-32 (zlib/IEEE) and the MetaQ checksum (CRC-32 & 0x7FFFFFFF) over any contiguous buffer.

Compiled; the GIL is released over buffers of 64 KiB or more. Knows nothing of records or files.
On x86-64 CPUs with PCLMULQDQ the whole 16-byte blocks of a buffer of 64 bytes or more are summed
by carry-less multiplication (``crc32_clmul.h``, several times zlib's speed); zlib sums the rest.
"""
from libc.stdint cimport uint32_t

cdef extern from "zlib.h":
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len) nogil

cdef extern from "crc32_clmul.h":
    size_t CLMUL_MIN "METAQ_CRC32_CLMUL_MIN"
    int clmul_usable "metaq_crc32_clmul_usable"() nogil
    uint32_t crc32_clmul "metaq_crc32_clmul"(const unsigned char *buf, size_t length, uint32_t crc) nogil

cdef size_t NOGIL_THRESHOLD = 65536
cdef bint CLMUL = clmul_usable() != 0

#: "pclmul" when this CPU sums with carry-less multiplication, "zlib" otherwise
implementation = "pclmul" if CLMUL else "zlib"


cdef uint32_t crc32_update(uint32_t crc, const unsigned char* p, size_t n) noexcept nogil:
    """The CRC-32 of the bytes already summed into ``crc`` followed by ``p[:n]`` (any length)."""
    cdef unsigned long c = crc
    cdef unsigned int chunk
    cdef size_t blocks
    if CLMUL and n >= CLMUL_MIN:
        blocks = n & ~(<size_t>15)
        c = ~crc32_clmul(p, blocks, ~crc)
        p += blocks
        n -= blocks
    while n > 0:
        chunk = <unsigned int>(n if n < 0x40000000 else 0x40000000)
        c = crc32(c, p, chunk)
        p += chunk
        n -= chunk
    return <uint32_t>c


cdef uint32_t crc32_raw(const unsigned char* p, size_t n) noexcept nogil:
    return crc32_update(<uint32_t>crc32(0, NULL, 0), p, n)


cdef uint32_t checksum_raw(const unsigned char* p, size_t n) noexcept nogil:
    return crc32_raw(p, n) & 0x7FFFFFFF


cdef uint32_t _crc_of(const unsigned char[::1] buf):
    cdef size_t n = buf.shape[0]
    cdef uint32_t c
    if n == 0:
        return 0
    if n >= NOGIL_THRESHOLD:
        with nogil:
            c = crc32_raw(&buf[0], n)
        return c
    return crc32_raw(&buf[0], n)


def crc32_of(data) -> int:
    """The unsigned CRC-32 of ``data`` (any contiguous bytes-like object), as ``zlib.crc32``."""
    return _crc_of(data)


def checksum(data) -> int:
    """MetaQ's checksum: CRC-32 of ``data`` masked with 0x7FFFFFFF (``b"test"`` -> 1484750348)."""
    return _crc_of(data) & 0x7FFFFFFF
