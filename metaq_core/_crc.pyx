# cython: language_level=3
"""CRC-32 (zlib/IEEE) and the MetaQ checksum (CRC-32 & 0x7FFFFFFF) over any contiguous buffer.

Compiled; the GIL is released over buffers of 64 KiB or more. Knows nothing of records or files.
"""
from libc.stdint cimport uint32_t

cdef extern from "zlib.h":
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len) nogil

cdef size_t NOGIL_THRESHOLD = 65536


cdef uint32_t crc32_update(uint32_t crc, const unsigned char* p, size_t n) noexcept nogil:
    """The CRC-32 of the bytes already summed into ``crc`` followed by ``p[:n]`` (any length)."""
    cdef unsigned long c = crc
    cdef unsigned int chunk
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
