# The compiled frame decoder (see _wire.pyx), declared here so that other compiled modules
# (the broker's put path) can read plain puts straight from its buffer with peek_put().
from libc.stdint cimport int64_t

cdef enum:
    MAX_TOKENS = 10


cdef struct PutView:
    # A complete plain put at the front of the decoder's buffer; the pointers point into that
    # buffer and stay valid until the decoder is called again.
    const char* topic
    Py_ssize_t topic_len
    int partition
    int flag
    int64_t checksum       # -1: the frame carries none
    int opaque
    const char* data
    Py_ssize_t length
    Py_ssize_t end         # buffer position just after the body


cdef class FrameDecoder:
    cdef bytearray _buf
    cdef Py_ssize_t _pos
    cdef public Py_ssize_t max_header
    cdef public Py_ssize_t max_body
    cdef int _kind                 # kind of the pending body, 0 if none
    cdef Py_ssize_t _length        # its announced length
    cdef tuple _fields
    cdef bint _oversize
    cdef bint _raw                 # the current call is next_raw(): a put comes as a tuple
    cdef Py_ssize_t _skip
    cdef Py_ssize_t _starts[MAX_TOKENS]
    cdef Py_ssize_t _lens[MAX_TOKENS]

    cdef object _int(self, const char* base, int i, str what)
    cdef object _long(self, const char* base, int i, str what)
    cdef str _token_text(self, const char* base, int i)
    cdef bint _is(self, const char* base, int i, const char* word, Py_ssize_t n)
    cdef Py_ssize_t _split(self, const char* base, Py_ssize_t pos, Py_ssize_t line_end) noexcept
    cdef int _int32(self, const char* base, int i, int* out) noexcept
    cdef int _put_checksum_form(self, const char* base, Py_ssize_t count) noexcept
    cdef object _next(self)
    cdef object _fast(self, const char* base, Py_ssize_t n)
    cdef object _start_body(self, int kind, length, tuple fields)
    cdef object _body(self)
    cdef int peek_put(self, PutView* out) noexcept
    cdef int consume_put(self, const PutView* view) except -1
