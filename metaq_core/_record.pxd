from libc.stdint cimport int32_t, int64_t, uint32_t

cdef enum:
    HEADER_SIZE = 20

cdef enum ScanStatus:
    SCAN_CLEAN = 0      # the buffer ends exactly after the last record
    SCAN_PARTIAL = 1    # an incomplete record follows the last complete one
    SCAN_CORRUPT = 2    # a record with a negative length or a wrong checksum follows

cdef inline uint32_t load_be32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]

cdef inline void store_be32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = (v >> 24) & 0xFF
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF

cdef void write_header(unsigned char* p, int32_t length, uint32_t checksum,
                       int64_t msg_id, int32_t flag) noexcept nogil

cdef int scan_raw(const unsigned char* buf, size_t start, size_t end, bint verify,
                  size_t* out_end, long long* out_count) noexcept nogil
