# File operations of one segment; see _segment.pyx.
