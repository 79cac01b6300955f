from libc.stdint cimport uint32_t

cdef uint32_t crc32_update(uint32_t crc, const unsigned char* p, size_t n) noexcept nogil
cdef uint32_t crc32_raw(const unsigned char* p, size_t n) noexcept nogil
cdef uint32_t checksum_raw(const unsigned char* p, size_t n) noexcept nogil
