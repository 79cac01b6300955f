"""The MetaQ wire codec in use: frames, encoders, and the decoder — compiled (``_wire``) unless
``METAQ_PURE_PYTHON=1`` selects the pure twin (``wire_py``). Import the codec from here.

Sans-I/O: it parses and encodes bytes and nothing else; server, clients and tests share it.
"""

from __future__ import annotations

import os

from metaq_core.frames import (  # noqa: F401
    DEFAULT_OPAQUE, LONG_MAX, MAX_HEADER, TX_TYPES, Event, Get, LocalProtocolError, OffsetRequest,
    Put, Quit, RemoteProtocolError, Result, Stats, Sync, Transaction, Value, Version, encode,
    encode_result, encode_value_header,
)

if os.environ.get("METAQ_PURE_PYTHON") == "1":
    from metaq_core.wire_py import FrameDecoder  # noqa: F401

    IMPLEMENTATION = "python"
else:
    from metaq_core._wire import FrameDecoder  # noqa: F401

    IMPLEMENTATION = "cython"
