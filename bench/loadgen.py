"""The multi-process load generator of ``bench/broker.py`` and ``bench/peers.py``: the same Python
client code drives metaq-trio (MetaQ ``put``), Redis (RESP ``XADD``), NATS JetStream (``PUB`` with
a reply inbox, answered by the stream's ack) and RabbitMQ (AMQP 0-9-1 ``basic.publish`` on a
channel in confirm mode, answered by ``basic.ack``), so the client language is the same for all.

Puts (``run_puts``)
    N worker processes (``multiprocessing``, spawn) each own a share of the connections. Every
    connection is a raw non-blocking socket kept at ``depth`` requests in flight: it sends
    ``depth`` frames at once, and for each batch of answers it reads, sends as many new frames in
    one ``send``. One ``epoll`` loop per worker. Frames are encoded before the clock starts: a
    ring of MetaQ ``put`` frames (``metaq_core.wire.encode(Put(...))``, 1.4.4 form with the
    CRC-32 checksum, a constant body, one opaque per ring slot) or one constant RESP
    ``XADD <stream> * f <value>`` frame, or a ring of NATS ``PUB <subject> <inbox>.<slot>`` frames
    per connection, or one AMQP publish (method + header + body frames, persistent). MetaQ answers
    are matched by opaque (``metaq_core.wire.FrameDecoder``), NATS acks by the slot in their inbox
    subject; Redis replies are counted in order (RESP is in order), AMQP confirms by delivery tag
    (``multiple`` acks confirm every earlier tag).

    The coordinator (the calling process) waits until every worker has connected, then gives them
    one start time; the measured window opens ``warmup`` seconds later and lasts ``window``
    seconds. A request counts when its answer is read inside the window; its latency is the time
    from the ``send`` that carried it to the ``recv`` that brought its answer (one clock read per
    send and per recv: the whole batch shares it). After the window the workers stop sending,
    collect what is still in flight and report: answers in the window, latencies (ns), errors and
    their own CPU time over the window (``time.process_time``). The coordinator reads the servers'
    CPU time (``/proc/<pid>/stat``: every thread of the process) at the window's edges.

Drain (``run_drain``, ``run_raw_loopback``)
    A consumer process fetches a partition from start to end with ``get <maxSize>`` one request
    at a time (as the Java consumer does per partition) into one preallocated buffer
    (``recv_into``), moves its offset by the complete records of each answer, and repeats for
    ``passes`` passes. The baseline is a sender/receiver pair of Python processes moving the same
    number of bytes over a loopback TCP socket with large ``send``/``recv_into`` calls. Neither
    side decodes the records: both measure moving the bytes. The Redis twin
    (``run_xread_drain``) reads a stream with ``XREAD COUNT <n>`` one request at a time; it must
    walk each reply's RESP framing (the last entry id is where the next read starts) but skips
    the values by length.

Clocks: ``time.monotonic_ns`` (CLOCK_MONOTONIC, the same clock in every process of the machine).
"""

from __future__ import annotations

import array
import collections
import contextlib
import multiprocessing
import os
import select
import socket
import struct
import time
import traceback
from dataclasses import dataclass

HOST = "127.0.0.1"
RECV_SIZE = 256 * 1024
READY_TIMEOUT = 30.0
TAIL_TIMEOUT = 5.0          # how long workers wait for in-flight answers after the window
GET_GROUP = "bench-drain"
RECORD_HEADER = 20

_CTX = multiprocessing.get_context("spawn")


# ------------------------------------------------------------------------------ put loads

@dataclass(frozen=True)
class PutLoad:
    """One load point: who is driven, how many connections, how deep each pipeline is."""

    protocol: str               # "metaq", "redis", "nats" or "amqp"
    port: int
    connections: int
    depth: int
    workers: int
    payload: int = 1024
    key: str = "bench"          # MetaQ topic (partition 0), Redis stream key, NATS subject, AMQP queue
    host: str = HOST

    def shares(self) -> list[int]:
        """Connections per worker, as even as possible."""
        workers = max(1, min(self.workers, self.connections))
        base, extra = divmod(self.connections, workers)
        return [base + (1 if i < extra else 0) for i in range(workers)]


def payload_bytes(size: int) -> bytes:
    """The constant message body: incompressible, the same in every process and run."""
    import random
    return random.Random(1024).randbytes(size)


def metaq_put_frames(load: PutLoad, ring: int) -> list[bytes]:
    """``ring`` MetaQ put frames (1.4.4 form: with checksum), opaque = slot number."""
    from metaq_core import record
    from metaq_core.wire import Put, encode

    data = payload_bytes(load.payload)
    crc = record.checksum(data)
    return [encode(Put(load.key, 0, 0, crc, None, opaque, data)) for opaque in range(ring)]


def redis_command(*parts: bytes) -> bytes:
    """A RESP array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def redis_xadd_frame(load: PutLoad) -> bytes:
    """``XADD <key> * f <value>`` as a RESP array of bulk strings."""
    return redis_command(b"XADD", load.key.encode(), b"*", b"f", payload_bytes(load.payload))


# ------------------------------------------------------------------ NATS (JetStream)

def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    """One CRLF-terminated line from a blocking socket (``buf`` keeps what follows it)."""
    while True:
        nl = buf.find(b"\r\n")
        if nl >= 0:
            line = bytes(buf[:nl])
            del buf[:nl + 2]
            return line
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection during the handshake")
        buf += data


def nats_handshake(sock: socket.socket, inbox: bytes) -> bytearray:
    """Read INFO, send CONNECT (no echo of +OK, headers on), subscribe to ``<inbox>.*`` and wait
    for the PONG that confirms both. Returns bytes already read past the PONG."""
    buf = bytearray()
    info = _read_line(sock, buf)
    if not info.startswith(b"INFO "):
        raise ConnectionError(f"not a NATS server: {info[:80]!r}")
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
                 b'"protocol":1,"name":"metaq-bench"}\r\nSUB ' + inbox + b".* 1\r\nPING\r\n")
    while True:
        line = _read_line(sock, buf)
        if line.startswith(b"-ERR"):
            raise ConnectionError(f"NATS: {line.decode(errors='replace')}")
        if line == b"PONG":
            return buf


def nats_pub_frames(load: PutLoad, inbox: bytes, ring: int) -> list[bytes]:
    """``ring`` ``PUB <subject> <inbox>.<slot> <n>`` frames carrying the constant payload."""
    data = payload_bytes(load.payload)
    subject = load.key.encode()
    return [b"PUB %s %s.%d %d\r\n%s\r\n" % (subject, inbox, slot, len(data), data)
            for slot in range(ring)]


def nats_request(host: str, port: int, subject: str, payload: bytes, timeout: float = 10.0) -> bytes:
    """One request/reply over a fresh connection (e.g. ``$JS.API.STREAM.CREATE.<name>``)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        inbox = b"_INBOX.req%d" % os.getpid()
        buf = nats_handshake(sock, inbox)
        sock.sendall(b"PUB %s %s.0 %d\r\n%s\r\n" % (subject.encode(), inbox, len(payload), payload))
        while True:
            line = _read_line(sock, buf)
            if line == b"PING":
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise ConnectionError(f"NATS: {line.decode(errors='replace')}")
            elif line.startswith((b"MSG ", b"HMSG ")):
                size = int(line.split()[-1])
                while len(buf) < size + 2:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("NATS closed the connection before replying")
                    buf += data
                return bytes(buf[:size])


# --------------------------------------------------------------------- AMQP 0-9-1

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_AMQP_FRAME = struct.Struct(">BHI")           # type, channel, payload size (then 0xCE)
AMQP_USER = b"guest"


def _shortstr(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def _longstr(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _amqp_table(entries: dict[str, str]) -> bytes:
    body = b"".join(_shortstr(k.encode()) + b"S" + _longstr(v.encode()) for k, v in entries.items())
    return _longstr(body)


def _amqp_frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _AMQP_FRAME.pack(kind, channel, len(payload)) + payload + b"\xce"


def _amqp_method(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return _amqp_frame(1, channel, struct.pack(">HH", class_id, method_id) + args)


def _amqp_expect(sock: socket.socket, buf: bytearray, class_id: int, method_id: int) -> bytes:
    """Read frames until the method (class_id, method_id) arrives; returns its arguments. A
    connection.close or channel.close from the server raises with its reply text."""
    while True:
        while len(buf) < 7 or len(buf) < 8 + _AMQP_FRAME.unpack_from(buf)[2]:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the AMQP server closed the connection")
            buf += data
        kind, _channel, size = _AMQP_FRAME.unpack_from(buf)
        payload = bytes(buf[7:7 + size])
        del buf[:8 + size]
        if kind != 1:
            continue
        cls, meth = struct.unpack_from(">HH", payload)
        if (cls, meth) in ((10, 50), (20, 40)):
            code = struct.unpack_from(">H", payload, 4)[0]
            text = payload[7:7 + payload[6]].decode(errors="replace")
            raise ConnectionError(f"AMQP server closed the {'connection' if cls == 10 else 'channel'}: "
                                  f"{code} {text}")
        if (cls, meth) == (class_id, method_id):
            return payload[4:]


def amqp_open(sock: socket.socket, confirm: bool = True) -> bytearray:
    """Connection handshake (PLAIN guest/guest, vhost /, no heartbeats), channel 1, and
    ``confirm.select`` when ``confirm``. Returns bytes already read past the last answer."""
    buf = bytearray()
    sock.sendall(AMQP_HEADER)
    _amqp_expect(sock, buf, 10, 10)                                       # connection.start
    sock.sendall(_amqp_method(0, 10, 11, _amqp_table({}) + _shortstr(b"PLAIN")
                              + _longstr(b"\x00" + AMQP_USER + b"\x00" + AMQP_USER)
                              + _shortstr(b"en_US")))
    channel_max, frame_max, _heartbeat = struct.unpack_from(">HIH", _amqp_expect(sock, buf, 10, 30))
    sock.sendall(_amqp_method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max or 131072, 0)))
    sock.sendall(_amqp_method(0, 10, 40, _shortstr(b"/") + _shortstr(b"") + b"\x00"))
    _amqp_expect(sock, buf, 10, 41)                                       # connection.open-ok
    sock.sendall(_amqp_method(1, 20, 10, _shortstr(b"")))
    _amqp_expect(sock, buf, 20, 11)                                       # channel.open-ok
    if confirm:
        sock.sendall(_amqp_method(1, 85, 10, b"\x00"))
        _amqp_expect(sock, buf, 85, 11)                                   # confirm.select-ok
    return buf


def amqp_queue(host: str, port: int, queue: str, arguments: dict[str, str] | None = None,
               delete: bool = False) -> None:
    """Declare a durable queue with ``arguments`` (e.g. ``x-queue-type: quorum``), or delete it."""
    with socket.create_connection((host, port), timeout=30) as sock:
        buf = amqp_open(sock, confirm=False)
        if delete:
            sock.sendall(_amqp_method(1, 50, 40, b"\x00\x00" + _shortstr(queue.encode()) + b"\x00"))
            _amqp_expect(sock, buf, 50, 41)
        else:
            sock.sendall(_amqp_method(1, 50, 10, b"\x00\x00" + _shortstr(queue.encode()) + b"\x02"
                                      + _amqp_table(arguments or {})))
            _amqp_expect(sock, buf, 50, 11)
        sock.sendall(_amqp_method(0, 10, 50, b"\x00\xc8" + _shortstr(b"bye") + b"\x00\x00\x00\x00"))


def amqp_publish_frame(load: PutLoad) -> bytes:
    """``basic.publish`` to the default exchange with routing key = queue, then the content
    header (persistent: delivery-mode 2) and the body frame."""
    data = payload_bytes(load.payload)
    method = _amqp_method(1, 60, 40, b"\x00\x00" + _shortstr(b"") + _shortstr(load.key.encode()) + b"\x00")
    header = _amqp_frame(2, 1, struct.pack(">HHQH", 60, 0, len(data), 0x1000) + b"\x02")
    return method + header + _amqp_frame(3, 1, data)


#: protocols whose answers name the request they answer (matched by slot, not in order)
SLOT_PROTOCOLS = ("metaq", "nats")


class _Conn:
    """One pipelined connection of a worker (every protocol; the parse method differs)."""

    __slots__ = ("sock", "fd", "ep", "pending", "outstanding", "next_op", "sent_at", "fifo",
                 "decoder", "rbuf", "frames", "ring", "batches", "proto", "acked", "early")

    def __init__(self, sock: socket.socket, ep, proto: str, frames, ring: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.ep = ep
        self.pending = bytearray()
        self.outstanding = 0
        self.next_op = 0
        self.ring = ring
        self.proto = proto
        self.frames = frames                    # metaq/nats: ring of frames; else [b"", f, f*2, …]
        self.sent_at = [0] * ring               # metaq: send time by opaque (0 = free)
        self.fifo: collections.deque[int] = collections.deque()   # redis/amqp: send times in order
        self.rbuf = bytearray()
        self.acked = 0                          # amqp: every delivery tag up to this is confirmed
        self.early: set[int] = set()            # amqp: tags confirmed out of order
        self.decoder = None
        if proto == "metaq":
            from metaq_core.wire import FrameDecoder
            self.decoder = FrameDecoder()

    def issue(self, count: int, now: int) -> None:
        if count <= 0:
            return
        if self.proto in SLOT_PROTOCOLS:
            sent_at, frames, ring = self.sent_at, self.frames, self.ring
            op = self.next_op
            chunks = []
            for _ in range(count):
                while sent_at[op]:                 # still in flight (answers out of order)
                    op = (op + 1) % ring
                sent_at[op] = now
                chunks.append(frames[op])
                op = (op + 1) % ring
            self.next_op = op
            data = chunks[0] if count == 1 else b"".join(chunks)
        else:
            self.fifo.extend([now] * count)
            data = self.frames[count]
        self.outstanding += count
        self.write(data)

    def write(self, data: bytes) -> None:
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.pending += data[sent:]
            self.ep.modify(self.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self) -> None:
        if not self.pending:
            return
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            return
        del self.pending[:sent]
        if not self.pending:
            self.ep.modify(self.fd, select.EPOLLIN)


def _parse_metaq(conn: _Conn, data: bytes, now: int, record, stats: list) -> int:
    """Answers in ``data``: returns how many; ``record`` is the latency list or None."""
    dec = conn.decoder
    dec.receive_data(data)
    sent_at = conn.sent_at
    done = 0
    while True:
        event = dec.next_event()
        if event is None:
            break
        op = event.opaque
        started = sent_at[op]
        sent_at[op] = 0
        if event.status != 200:
            stats[0] += 1
            if stats[1] is None:
                stats[1] = f"status {event.status}: {event.body!r}"
        if record is not None:
            record(now - started)
        done += 1
    conn.outstanding -= done
    return done


def _answered_in_order(conn: _Conn, done: int, now: int, record) -> int:
    """``done`` requests of an in-order protocol answered: their send times leave the FIFO."""
    popleft = conn.fifo.popleft
    if record is not None:
        for _ in range(done):
            record(now - popleft())
    else:
        for _ in range(done):
            popleft()
    conn.outstanding -= done
    return done


def _parse_redis(conn: _Conn, data: bytes, now: int, record, stats: list) -> int:
    buf = conn.rbuf
    buf += data
    size = len(buf)
    pos = 0
    done = 0
    find = buf.find
    while pos < size:
        nl = find(b"\r\n", pos)
        if nl < 0:
            break
        kind = buf[pos]
        if kind == 36:                              # $<n>\r\n<n bytes>\r\n (the entry id)
            end = nl + 2 + int(buf[pos + 1:nl]) + 2
            if end > size:
                break
            pos = end
        else:                                       # -ERR …, +OK, :n
            if kind == 45:
                stats[0] += 1
                if stats[1] is None:
                    stats[1] = bytes(buf[pos:nl]).decode(errors="replace")
            pos = nl + 2
        done += 1
    if pos:
        del buf[:pos]
    return _answered_in_order(conn, done, now, record)


def _parse_nats(conn: _Conn, data: bytes, now: int, record, stats: list) -> int:
    """JetStream acks (``MSG <inbox>.<slot> 1 <n>``, a JSON body; ``HMSG`` = a status such as
    503 no responders); PINGs are answered."""
    buf = conn.rbuf
    buf += data
    size = len(buf)
    pos = 0
    done = 0
    sent_at = conn.sent_at
    while pos < size:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            break
        head = buf[pos]
        if head == 77 or head == 72:                # MSG / HMSG: a header line, then n bytes
            fields = bytes(buf[pos:nl]).split()
            n = int(fields[-1])
            end = nl + 2 + n + 2
            if end > size:
                break
            subject = fields[1]
            slot = int(subject[subject.rindex(b".") + 1:])
            if head == 72 or buf.find(b'"error"', nl + 2, nl + 2 + n) >= 0:
                stats[0] += 1
                if stats[1] is None:
                    stats[1] = bytes(buf[nl + 2:nl + 2 + n]).decode(errors="replace")
            started = sent_at[slot]
            sent_at[slot] = 0
            if record is not None:
                record(now - started)
            done += 1
            pos = end
            continue
        if buf.startswith(b"PING", pos):
            conn.write(b"PONG\r\n")
        elif head == 45:                            # -ERR '…'
            stats[0] += 1
            if stats[1] is None:
                stats[1] = bytes(buf[pos:nl]).decode(errors="replace")
        pos = nl + 2                                # +OK, PONG, INFO
    if pos:
        del buf[:pos]
    conn.outstanding -= done
    return done


def _amqp_confirm(conn: _Conn, tag: int, multiple: bool) -> int:
    """Record a confirm of ``tag`` (and every earlier tag when ``multiple``); returns how many
    publishes it newly confirms."""
    if multiple:
        newly = tag - conn.acked - sum(1 for t in conn.early if t <= tag)
        conn.early = {t for t in conn.early if t > tag}
        conn.acked = max(conn.acked, tag)
        return max(0, newly)
    if tag <= conn.acked or tag in conn.early:
        return 0
    conn.early.add(tag)
    while conn.acked + 1 in conn.early:
        conn.acked += 1
        conn.early.discard(conn.acked)
    return 1


def _parse_amqp(conn: _Conn, data: bytes, now: int, record, stats: list) -> int:
    """``basic.ack`` / ``basic.nack`` frames; a close from the server raises. Latencies are
    taken in publish order (confirms of one queue come in order)."""
    buf = conn.rbuf
    buf += data
    size = len(buf)
    pos = 0
    done = 0
    unpack = _AMQP_FRAME.unpack_from
    while size - pos >= 8:
        kind, _channel, n = unpack(buf, pos)
        end = pos + 8 + n
        if end > size:
            break
        if kind == 1:
            cls, meth = struct.unpack_from(">HH", buf, pos + 7)
            if cls == 60 and (meth == 80 or meth == 120):       # basic.ack / basic.nack
                tag, bits = struct.unpack_from(">QB", buf, pos + 11)
                newly = _amqp_confirm(conn, tag, bool(bits & 1))
                if meth == 120:
                    stats[0] += newly
                    if stats[1] is None:
                        stats[1] = f"basic.nack of delivery tag {tag}"
                done += newly
            elif (cls, meth) in ((10, 50), (20, 40)):
                text = bytes(buf[pos + 14:pos + 14 + buf[pos + 13]]).decode(errors="replace")
                raise ConnectionError(f"the AMQP server closed the {'connection' if cls == 10 else 'channel'}: {text}")
        pos = end
    if pos:
        del buf[:pos]
    return _answered_in_order(conn, done, now, record)


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _open(load: PutLoad, index: int) -> tuple[socket.socket, bytes, bytearray]:
    """A connected non-blocking socket, after the protocol's handshake: (socket, NATS inbox or
    b"", bytes read past the handshake)."""
    if load.protocol not in ("nats", "amqp"):
        return _connect(load.host, load.port), b"", bytearray()
    sock = socket.create_connection((load.host, load.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inbox = b""
    if load.protocol == "nats":
        inbox = b"_INBOX.%dx%d" % (os.getpid(), index)
        rest = nats_handshake(sock, inbox)
    else:
        rest = amqp_open(sock)
    sock.setblocking(False)
    return sock, inbox, rest


def _put_worker(load: PutLoad, nconns: int, pipe) -> None:
    with reporting(pipe):
        pipe.send(("done", _put_worker_run(load, nconns, pipe)))


def _put_worker_run(load: PutLoad, nconns: int, pipe) -> dict:
    depth = load.depth
    if load.protocol == "metaq":
        ring = max(64, 4 * depth)
        frames = metaq_put_frames(load, ring)
        parse = _parse_metaq
    elif load.protocol in ("redis", "amqp"):
        ring = 1
        frame = redis_xadd_frame(load) if load.protocol == "redis" else amqp_publish_frame(load)
        frames = [frame * k for k in range(depth + 1)]
        parse = _parse_redis if load.protocol == "redis" else _parse_amqp
    elif load.protocol == "nats":
        ring = max(64, 4 * depth)
        frames = None                           # one ring per connection (its own inbox)
        parse = _parse_nats
    else:
        raise ValueError(f"unknown protocol {load.protocol!r}")
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    for index in range(nconns):
        sock, inbox, rest = _open(load, index)
        conn = _Conn(sock, ep, load.protocol, frames or nats_pub_frames(load, inbox, ring), ring)
        conn.rbuf += rest
        conns[conn.fd] = conn
        ep.register(conn.fd, select.EPOLLIN)
    pipe.send(("ready", os.getpid()))
    kind, t_go, t_start, t_end = pipe.recv()
    assert kind == "go"

    latencies = array.array("q")
    record = latencies.append
    stats: list = [0, None]      # errors, first error text
    in_window = 0
    total = 0
    clock = time.monotonic_ns
    while clock() < t_go:
        time.sleep(max(0.0, (t_go - clock()) / 1e9))
    now = clock()
    for conn in conns.values():
        conn.issue(depth, now)
    cpu_start = cpu_end = None
    t_cpu_start = t_cpu_end = 0
    sending = True
    deadline = None
    poll = ep.poll
    RECV = RECV_SIZE
    while True:
        now = clock()
        if cpu_start is None and now >= t_start:
            cpu_start, t_cpu_start = time.process_time(), now
        if sending and now >= t_end:
            cpu_end, t_cpu_end = time.process_time(), now
            sending = False
            deadline = now + int(TAIL_TIMEOUT * 1e9)
        if not sending:
            if now >= deadline or not any(c.outstanding for c in conns.values()):
                break
        if cpu_start is None:
            timeout = min(0.05, max(0.0, (t_start - now) / 1e9))
        elif sending:
            timeout = min(0.05, max(0.0, (t_end - now) / 1e9))
        else:
            timeout = 0.05
        events = poll(timeout)
        now = clock()
        measuring = t_start <= now < t_end
        for fd, mask in events:
            conn = conns[fd]
            if mask & select.EPOLLOUT:
                conn.flush()
            if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                try:
                    data = conn.sock.recv(RECV)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError(f"{load.protocol} server closed a connection "
                                          f"({conn.outstanding} requests in flight)")
                done = parse(conn, data, now, record if measuring else None, stats)
                total += done
                if measuring:
                    in_window += done
                if sending and done:
                    conn.issue(done, now)
    left = sum(c.outstanding for c in conns.values())
    for conn in conns.values():
        conn.sock.close()
    ep.close()
    cpu_elapsed = (t_cpu_end - t_cpu_start) / 1e9 if cpu_end is not None else 0.0
    return {
        "pid": os.getpid(),
        "connections": nconns,
        "answers_in_window": in_window,
        "answers_total": total,
        "unanswered_at_end": left,
        "errors": stats[0],
        "first_error": stats[1],
        "cpu_seconds": (cpu_end - cpu_start) if cpu_end is not None else 0.0,
        "cpu_elapsed": cpu_elapsed,
        "latencies": latencies.tobytes(),
    }


# --------------------------------------------------------------------------- CPU probes

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of every thread of ``pid`` (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS     # utime, stime (fields 14, 15)


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy (not idle, not iowait) since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


@contextlib.contextmanager
def reporting(pipe):
    """The body of a child process: an exception is sent to the coordinator as ("error", text)
    (which raises it there) instead of killing the child; the pipe is closed at the end."""
    try:
        yield
    except BaseException as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        pipe.close()


def _spawn(target, *args):
    parent, child = _CTX.Pipe()
    proc = _CTX.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    child.close()
    return proc, parent


def reap(children, timeout: float = 10.0) -> None:
    """Join each (process, pipe) child (None processes are skipped), killing one that has not
    exited within ``timeout`` s, and close its pipe."""
    for proc, pipe in children:
        if proc is None:
            continue
        proc.join(timeout=timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
        pipe.close()


def _expect(pipe, kind: str, timeout: float, what: str):
    if not pipe.poll(timeout):
        raise TimeoutError(f"{what}: no {kind!r} message within {timeout:g} s")
    try:
        message = pipe.recv()
    except EOFError:
        raise RuntimeError(f"{what}: the worker process died") from None
    if message[0] == "error":
        raise RuntimeError(f"{what} failed in the worker process:\n{message[1]}")
    if message[0] != kind:
        raise RuntimeError(f"{what}: expected {kind!r}, got {message[0]!r}")
    return message


def _sleep_until(deadline_ns: int) -> None:
    while True:
        left = (deadline_ns - time.monotonic_ns()) / 1e9
        if left <= 0:
            return
        time.sleep(left)


#: the quantiles a put window reports as its latency distribution (for CDF plots)
CDF_QUANTILES = tuple(i / 40 for i in range(40)) + (0.99, 0.995, 0.999, 1.0)


def quantile(ordered, q: float) -> float | None:
    if not ordered:
        return None
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def run_puts(load: PutLoad, warmup: float, window: float, server_pids: dict[str, int],
             on_window=None) -> dict:
    """One measured window of ``load``. ``server_pids``: name → pid whose CPU is read at the
    window's edges. ``on_window(pids)`` (optional) is called when the window opens, with the
    worker pids (a hook for a profiler). Returns plain numbers (see the end)."""
    workers = []
    try:
        for share in load.shares():
            workers.append(_spawn(_put_worker, load, share))
        gen_pids = [_expect(pipe, "ready", READY_TIMEOUT, f"{load.protocol} worker")[1]
                    for _, pipe in workers]
        t_go = time.monotonic_ns() + 20_000_000
        t_start = t_go + int(warmup * 1e9)
        t_end = t_start + int(window * 1e9)
        for _, pipe in workers:
            pipe.send(("go", t_go, t_start, t_end))
        _sleep_until(t_start)
        cpu0 = {name: process_cpu_seconds(pid) for name, pid in server_pids.items()}
        busy0 = machine_busy_seconds()
        m0 = time.monotonic_ns()
        if on_window is not None:
            on_window(gen_pids)
        _sleep_until(t_end)
        cpu1 = {name: process_cpu_seconds(pid) for name, pid in server_pids.items()}
        busy1 = machine_busy_seconds()
        m1 = time.monotonic_ns()
        results = [_expect(pipe, "done", window + TAIL_TIMEOUT + 30, f"{load.protocol} worker")[1]
                   for _, pipe in workers]
    finally:
        reap(workers)
    latencies = array.array("q")
    for r in results:
        latencies.frombytes(r.pop("latencies"))
    ordered = sorted(latencies)
    answers = sum(r["answers_in_window"] for r in results)
    errors = sum(r["errors"] for r in results)
    gen_cpu = sum(r["cpu_seconds"] / r["cpu_elapsed"] for r in results if r["cpu_elapsed"] > 0)
    probe_elapsed = (m1 - m0) / 1e9
    server_cpu = {}
    for name in server_pids:
        if cpu0.get(name) is None or cpu1.get(name) is None:
            server_cpu[name] = None
        else:
            server_cpu[name] = (cpu1[name] - cpu0[name]) / probe_elapsed
    machine = None if busy0 is None or busy1 is None else (busy1 - busy0) / probe_elapsed
    known = gen_cpu + sum(v for v in server_cpu.values() if v is not None)
    return {
        "window": window,
        "answers": answers,
        "msg_per_s": answers / window,
        "mb_per_s": answers * load.payload / window / 1e6,
        "p50_ms": (quantile(ordered, 0.50) or 0.0) / 1e6,
        "p99_ms": (quantile(ordered, 0.99) or 0.0) / 1e6,
        "latency_cdf_ms": [[q, (quantile(ordered, q) or 0.0) / 1e6] for q in CDF_QUANTILES]
        if ordered else [],
        "errors": errors,
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
        "unanswered_at_end": sum(r["unanswered_at_end"] for r in results),
        "generator_cpu_cores": gen_cpu,
        "generator_processes": len(results),
        "server_cpu_cores": server_cpu,
        "machine_cpu_cores": machine,
        # everything else that ran meanwhile (other processes on a shared machine, kernel work
        # not charged to a process): a noise flag
        "other_cpu_cores": None if machine is None else max(0.0, machine - known),
    }


# --------------------------------------------------------------------------------- drain

def _read_response(sock: socket.socket, view: memoryview, buf: bytearray) -> tuple[bytes, int, int]:
    """Read one whole response into ``buf``: (header line, header end, total bytes)."""
    got = 0
    while True:
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("the broker closed the connection")
        got += n
        nl = buf.find(b"\r\n", 0, got)
        if nl >= 0:
            break
    header = bytes(buf[:nl])
    tokens = header.split(b" ")
    body = int(tokens[1]) if tokens[0] == b"value" else int(tokens[2])
    total = nl + 2 + body
    while got < total:
        n = sock.recv_into(view[got:total])
        if not n:
            raise ConnectionError("the broker closed the connection mid-answer")
        got += n
    return header, nl + 2, total


def _drain_consumer(port: int, topic: str, start: int, end: int, record_size: int,
                    max_size: int, passes: int, pipe) -> None:
    with reporting(pipe):
        from metaq_core.wire import Get, encode

        sock = socket.create_connection((HOST, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(max_size + 4096)
        view = memoryview(buf)
        expected_length = record_size - RECORD_HEADER
        wire = records = gets = 0
        latencies = []
        pipe.send(("ready", os.getpid()))
        _expect(pipe, "go", READY_TIMEOUT, "drain consumer")
        cpu0, t0 = time.process_time(), time.monotonic_ns()
        opaque = 0
        for _ in range(passes):
            offset = start
            while offset < end:
                opaque += 1
                s = time.monotonic_ns()
                sock.sendall(encode(Get(topic, GET_GROUP, 0, offset, max_size, opaque)))
                header, body_at, total = _read_response(sock, view, buf)
                latencies.append(time.monotonic_ns() - s)
                if not header.startswith(b"value "):
                    raise RuntimeError(f"get at offset {offset}: {header!r} {bytes(buf[body_at:total])!r}")
                n = total - body_at
                (length,) = struct.unpack_from(">i", buf, body_at)
                if length != expected_length:
                    raise RuntimeError(f"get at offset {offset}: a record of {length} bytes, "
                                       f"expected {expected_length}")
                complete = n - n % record_size
                if complete == 0:
                    raise RuntimeError(f"get at offset {offset}: no complete record in {n} bytes")
                offset += complete
                wire += total
                records += complete
                gets += 1
        _consumer_done(pipe, t0, cpu0, latencies, wire_bytes=wire, record_bytes=records, gets=gets)
        sock.close()


def run_drain(port: int, topic: str, start: int, end: int, record_size: int, max_size: int,
              passes: int, server_pid: int) -> dict:
    """``passes`` sequential passes of ``get`` over [start, end) of ``topic`` partition 0."""
    result = _run_consumer("drain consumer", server_pid, _drain_consumer, port, topic, start, end,
                           record_size, max_size, passes)
    result["mb_per_s"] = result["record_bytes"] / result["elapsed"] / 1e6
    return result


def _run_consumer(what: str, server_pid: int, target, *args) -> dict:
    """Start a consumer process, give it the go, and collect its result with its own CPU use
    and the server's over the same time (``client_cpu_cores``, ``server_cpu_cores``)."""
    proc, pipe = _spawn(target, *args)
    try:
        _expect(pipe, "ready", READY_TIMEOUT, what)
        cpu0, m0 = process_cpu_seconds(server_pid), time.monotonic_ns()
        pipe.send(("go",))
        result = _expect(pipe, "done", 600, what)[1]
        cpu1, m1 = process_cpu_seconds(server_pid), time.monotonic_ns()
    finally:
        reap([(proc, pipe)])
    result["client_cpu_cores"] = result["cpu_seconds"] / result["elapsed"]
    result["server_cpu_cores"] = (None if cpu0 is None or cpu1 is None
                                  else (cpu1 - cpu0) / ((m1 - m0) / 1e9))
    return result


def _consumer_done(pipe, t0: int, cpu0: float, latencies: list[int], **counts) -> None:
    """A consumer process's report: elapsed time and CPU since (t0, cpu0), request latency
    quantiles, and its counts."""
    elapsed = (time.monotonic_ns() - t0) / 1e9
    cpu = time.process_time() - cpu0
    latencies.sort()
    pipe.send(("done", {"elapsed": elapsed, "cpu_seconds": cpu, **counts,
                        "p50_ms": quantile(latencies, 0.5) / 1e6,
                        "p99_ms": quantile(latencies, 0.99) / 1e6}))


def redis_fill(port: int, key: str, count: int, payload: int, batch: int = 1000) -> None:
    """``XADD`` ``count`` messages of ``payload`` bytes to stream ``key``, ``batch`` at a time
    in one pipeline, waiting for every batch's replies (``$<n>\r\n<id>\r\n`` each)."""
    frame = redis_xadd_frame(PutLoad("redis", port, 1, 1, 1, payload=payload, key=key))
    with socket.create_connection((HOST, port), timeout=60) as sock:
        left = count
        while left:
            n = min(batch, left)
            sock.sendall(frame * n)
            replies = bytearray()
            while replies.count(b"\r\n") < 2 * n:
                data = sock.recv(RECV_SIZE)
                if not data:
                    raise ConnectionError("redis-server closed the connection while filling")
                replies += data
            if replies.startswith(b"-") or b"\n-" in replies:
                raise RuntimeError(f"XADD failed: {bytes(replies[:200])!r}")
            left -= n


class _RespReader:
    """Reads RESP from a blocking socket: whole lines, or ``n`` bytes and their CRLF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.wire = 0

    def _more(self) -> None:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionError("redis-server closed the connection")
        self.buf += data
        self.wire += len(data)

    def line(self) -> bytes:
        while True:
            nl = self.buf.find(b"\r\n", self.pos)
            if nl >= 0:
                out = bytes(self.buf[self.pos:nl])
                self.pos = nl + 2
                return out
            self._more()

    def take(self, n: int) -> bytes:
        end = self.pos + n
        while len(self.buf) < end + 2:
            self._more()
        out = bytes(self.buf[self.pos:end])
        self.pos = end + 2
        return out

    def skip(self, n: int) -> None:
        while len(self.buf) < self.pos + n + 2:
            self._more()
        self.pos += n + 2

    def compact(self) -> None:
        del self.buf[:self.pos]
        self.pos = 0


def _xread_consumer(port: int, key: str, count: int, batch: int, passes: int, payload: int,
                    pipe) -> None:
    """Read stream ``key`` from the start, ``XREAD COUNT <batch>`` one request at a time, for
    ``passes`` passes of ``count`` entries. The reply's framing is walked (an entry's id is where
    the next read starts); the values are skipped by length, not copied."""
    with reporting(pipe):
        sock = socket.create_connection((HOST, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _RespReader(sock)
        latencies = []
        requests = entries = 0
        pipe.send(("ready", os.getpid()))
        _expect(pipe, "go", READY_TIMEOUT, "XREAD consumer")
        cpu0, t0 = time.process_time(), time.monotonic_ns()
        head = [b"XREAD", b"COUNT", b"%d" % batch, b"STREAMS", key.encode()]
        for _ in range(passes):
            last, got = b"0-0", 0
            while got < count:
                s = time.monotonic_ns()
                sock.sendall(redis_command(*head, last))
                top = reader.line()
                if top != b"*1":
                    raise RuntimeError(f"XREAD after {last!r} ({got} of {count} read): {top!r}")
                reader.line()                                   # *2: the stream, its entries
                reader.skip(int(reader.line()[1:]))             # the stream's name
                n = int(reader.line()[1:])
                for _ in range(n):
                    reader.line()                               # *2: id, fields
                    last = reader.take(int(reader.line()[1:]))
                    reader.line()                               # *2: field, value
                    reader.skip(int(reader.line()[1:]))
                    size = int(reader.line()[1:])
                    if size != payload:
                        raise RuntimeError(f"XREAD: a value of {size} bytes, expected {payload}")
                    reader.skip(size)
                reader.compact()
                latencies.append(time.monotonic_ns() - s)
                got += n
                entries += n
                requests += 1
        _consumer_done(pipe, t0, cpu0, latencies, messages=entries, wire_bytes=reader.wire,
                       requests=requests)
        sock.close()


def run_xread_drain(port: int, key: str, count: int, batch: int, passes: int, payload: int,
                    server_pid: int) -> dict:
    """``passes`` sequential passes of ``XREAD COUNT <batch>`` over the ``count`` entries of
    stream ``key`` (the Redis twin of ``run_drain``)."""
    result = _run_consumer("XREAD consumer", server_pid, _xread_consumer, port, key, count, batch,
                           passes, payload)
    result["msg_per_s"] = result["messages"] / result["elapsed"]
    return result


def _raw_receiver(total: int, chunk: int, pipe) -> None:
    with reporting(pipe):
        listener = socket.create_server((HOST, 0))
        pipe.send(("ready", listener.getsockname()[1]))
        sock, _ = listener.accept()
        listener.close()
        buf = bytearray(chunk)
        view = memoryview(buf)
        got = 0
        cpu0, t0 = time.process_time(), time.monotonic_ns()
        sock.sendall(b"g")                    # the sender starts now
        while got < total:
            n = sock.recv_into(view, min(chunk, total - got))
            if not n:
                raise ConnectionError(f"sender closed after {got} of {total} bytes")
            got += n
        elapsed = (time.monotonic_ns() - t0) / 1e9
        cpu = time.process_time() - cpu0
        sock.close()
        pipe.send(("done", {"elapsed": elapsed, "cpu_seconds": cpu, "bytes": got}))


def _raw_sender(port: int, total: int, chunk: int, pipe) -> None:
    with reporting(pipe):
        sock = socket.create_connection((HOST, port), timeout=30)
        data = memoryview(os.urandom(chunk))
        if sock.recv(1) != b"g":
            raise ConnectionError("receiver did not give the start signal")
        cpu0, t0 = time.process_time(), time.monotonic_ns()
        left = total
        while left > 0:
            n = min(chunk, left)
            sock.sendall(data[:n])
            left -= n
        elapsed = (time.monotonic_ns() - t0) / 1e9
        cpu = time.process_time() - cpu0
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)                          # wait for the receiver to close
        sock.close()
        pipe.send(("done", {"elapsed": elapsed, "cpu_seconds": cpu}))


def run_raw_loopback(total: int, chunk: int) -> dict:
    """Move ``total`` bytes from one Python process to another over loopback TCP."""
    receiver, rpipe = _spawn(_raw_receiver, total, chunk)
    sender = spipe = None
    try:
        port = _expect(rpipe, "ready", READY_TIMEOUT, "raw receiver")[1]
        sender, spipe = _spawn(_raw_sender, port, total, chunk)
        received = _expect(rpipe, "done", 600, "raw receiver")[1]
        sent = _expect(spipe, "done", 60, "raw sender")[1]
    finally:
        reap([(receiver, rpipe), (sender, spipe)])
    elapsed = received["elapsed"]
    return {"elapsed": elapsed, "bytes": received["bytes"],
            "mb_per_s": received["bytes"] / elapsed / 1e6,
            "receiver_cpu_cores": received["cpu_seconds"] / elapsed,
            "sender_cpu_cores": sent["cpu_seconds"] / elapsed}
