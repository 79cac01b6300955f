# Threshold-mode appends in one compiled call; see _append.pyx.
from collections.abc import Callable
from typing import Any

DIRECT_MAX: int

class DirectAppender:
    records: int
    nbytes: int
    def __init__(self, plog: Any, write_lock: Any, failed: Callable[[OSError], None],
                 kick: Callable[[bool], None], appended: type, threshold: int,
                 max_segment: int, max_record: int, interval_s: float) -> None: ...
    def append(self, data: bytes, flag: int, msg_id: int | None, checksum: int,
               ids: Any, defer: bool = False) -> Any | None: ...

class StoreAppends:
    def __init__(self, logs: dict, ids: Any, slow: Callable[..., Any], new_latch: Callable[[], Any],
                 thread_sink: Any) -> None: ...
    def append_data(self, topic: str, partition: int, data: bytes, *, flag: int = 0,
                    msg_id: int | None = None, checksum: int = -1) -> Any: ...
