"""The record codec in use: the compiled one, or its pure-Python twin when ``METAQ_PURE_PYTHON=1``.

Import the codec from here, never from ``_record``/``record_py`` directly (tests excepted), so the
environment switch reaches every user. ``IMPLEMENTATION`` says which one loaded.
"""

from __future__ import annotations

import os

if os.environ.get("METAQ_PURE_PYTHON") == "1":
    from metaq_core.record_py import (  # noqa: F401
        CLEAN, CORRUPT, PARTIAL, check_data, checksum, crc32_of, decode, decode_header,
        encode_header, encode_record, make_data, scan, split_data,
    )

    IMPLEMENTATION = "python"
else:
    from metaq_core._crc import checksum, crc32_of  # noqa: F401
    from metaq_core._record import (  # noqa: F401
        CLEAN, CORRUPT, PARTIAL, check_data, decode, decode_header, encode_header,
        encode_record, make_data, scan, split_data,
    )

    IMPLEMENTATION = "cython"

HEADER_SIZE = 20
ATTRIBUTE_FLAG = 1

__all__ = [
    "ATTRIBUTE_FLAG", "CLEAN", "CORRUPT", "HEADER_SIZE", "IMPLEMENTATION", "PARTIAL", "check_data",
    "checksum", "crc32_of", "decode", "decode_header", "encode_header", "encode_record",
    "make_data", "scan", "split_data",
]
