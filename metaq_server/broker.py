"""The broker: a trio TCP server that answers the MetaQ protocol from a ``metaq_core.LogStore``.

``Broker.run()`` listens (``trio.serve_tcp``), runs one task per connection, schedules retention
and handles signals; ``dispatch`` implements put/get/offset/stats/version/sync/transaction in the
order protocol §5 gives. The store decides file layouts; this module never builds a path.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable
import os
import random
import signal
import time

import trio

from metaq_core import LogStore, record
from metaq_core.cron import CronExpression
from metaq_core.errors import ClockBackwardsError, MetaqError
from metaq_core.naming import validate_topic
from metaq_core.partition import OffsetOutOfRangeError, PartitionLog
from metaq_core.retention import RetentionPolicy, apply_policy
from metaq_core.trio_bridge import TrioSink, yield_to_writers
from metaq_core.wire import (
    LONG_MAX, Get, OffsetRequest, Put, Stats, Sync, Transaction, Version,
    encode_result, encode_value_header,
)
from metaq_server import stats as statsmod
from metaq_server._puts import PutAnswers, PutIntake, Route
from metaq_server.config import BrokerConfig, TopicConfig
from metaq_server.connection import IDLE_TIMEOUT, Connection
from zkmeta.bridge import KazooException
from zkmeta.registry import (
    BrokerIdentity, BrokerRegistry, RegistrationError, TopicRegistration, advertised_host,
    open_registry, startup_topics,
)

log = logging.getLogger("metaq.server")

PROTOCOL_VERSION = "1.4.4"
SHUTDOWN_GRACE = 10.0

_CHECKSUM_FAILURE = "Checksum failure,message may be corrupted when transfering on networking."


class Broker:
    """One MetaQ broker: configuration, store, statistics and the connections it serves."""

    def __init__(self, config: BrokerConfig, *, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        system = config.system
        self.broker_id = system.broker_id
        self.port = system.server_port
        self.host = system.host_name or "127.0.0.1"
        self.started = time.time()
        self.counters = statsmod.Counters()
        self.realtime = statsmod.RealTimeStats(self._stat_enabled)
        self.connections: set[Connection] = set()
        self.closed_partitions: set[tuple[str, int]] = set()
        self.store: LogStore | None = None
        self.idle_timeout = IDLE_TIMEOUT
        #: Plain puts go through the compiled put path (False: each through dispatch, as the
        #: pure-Python build does; tests compare both).
        self.compiled_puts = os.environ.get("METAQ_PURE_PYTHON") != "1"
        self._accepted: dict[str, TopicConfig] = {}
        #: What the compiled put path knows of each topic it may serve alone (see _puts.pyx);
        #: a topic gets its route, and each partition its log, on its first put here.
        self.routes: dict[str, Route] = {}
        self.listeners: list[trio.SocketListener] = []
        self._sink: TrioSink | None = None
        self._shutdown: trio.Event | None = None
        self.stopped: trio.Event | None = None  # set once run() has closed the store
        #: The ZooKeeper registration while run() runs (None with zk.zkEnable=false).
        self.registry: BrokerRegistry | None = None
        #: Override of zk.zkSyncTimeMs in seconds (tests use 0); None = the config's value.
        self.zk_sync_time: float | None = None

    # ------------------------------------------------------------------------------ config

    def accepted(self, topic: str) -> TopicConfig | None:
        """The config of an accepted topic (cached: matching wildcard sections costs a regex),
        None for a topic this broker does not accept."""
        topic_config = self._accepted.get(topic)
        if topic_config is None:
            topic_config = self.config.topic_config(topic)
            if topic_config is not None:  # only accepted names are cached: others are unbounded
                self._accepted[topic] = topic_config
        return topic_config

    def _stat_enabled(self, topic: str) -> bool:
        topic_config = self.accepted(topic)
        return bool(topic_config.stat) if topic_config is not None else bool(self.config.system.stat)

    def open_store(self) -> LogStore:
        config = self.config
        system = config.system
        extra = sorted({t.data_path for t in config.topics.values() if t.data_path})
        self.store = LogStore(
            system.data_path, broker_id=system.broker_id,
            load_in_parallel=system.load_message_stores_in_parallel,
            settings_for=lambda topic: self.config.log_settings(topic), extra_paths=extra,
            max_transfer_size=system.max_transfer_size, max_segment_size=system.max_segment_size,
            unflush_threshold=system.unflush_threshold, unflush_interval=system.unflush_interval,
            num_partitions=system.num_partitions)
        log.info("broker %d: store %s loaded, %d partition(s)", self.broker_id, system.data_path,
                 len(self.store.logs()))
        return self.store

    # ---------------------------------------------------------------------------- serving

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
                  handle_signals: bool = True) -> None:
        """Serve until SIGTERM/SIGINT (or ``shutdown()``), then shut down gracefully.

        ZooKeeper (broker.md §3.4): connect first (a failure aborts startup, ZkConnectError),
        register after listening (RegistrationError aborts startup and deletes nothing); at
        shutdown unregister, close the session and wait zkSyncTimeMs before draining. With
        zk.zkEnable=false there is no registry and no connection.
        """
        self._shutdown = trio.Event()
        self.stopped = trio.Event()
        self._sink = None
        async with open_registry(self.config.zookeeper, sync_time=self.zk_sync_time) as registry:
            self.registry = registry
            if self.store is None:
                await trio.to_thread.run_sync(self.open_store)
            try:
                async with trio.open_nursery() as nursery:
                    if handle_signals:
                        nursery.start_soon(self._watch_signals)
                    async with trio.open_nursery() as conn_nursery:
                        await self._serve(conn_nursery, registry, task_status)
                    nursery.cancel_scope.cancel()
            finally:
                self.registry = None
                with trio.CancelScope(shield=True):
                    log.info("broker %d: draining and syncing every partition", self.broker_id)
                    await trio.to_thread.run_sync(self.store.close)
                    self.stopped.set()
                    log.info("broker %d stopped", self.broker_id)

    async def _serve(self, conn_nursery: trio.Nursery, registry: BrokerRegistry | None,
                     task_status: trio.TaskStatus) -> None:
        """Listen, register, serve until shutdown; then unregister, stop accepting, let the
        connections answer what they have read, and cancel what is left."""
        accept_scope = trio.CancelScope()

        async def accept(*, task_status=trio.TASK_STATUS_IGNORED):
            with accept_scope:
                await trio.serve_tcp(self._handle, self.port, host=self.host,
                                     handler_nursery=conn_nursery, task_status=task_status)

        self.listeners = await conn_nursery.start(accept)
        self.port = self.listeners[0].socket.getsockname()[1]
        conn_nursery.start_soon(self._retention_loop)
        log.info("broker %d listening on %s:%d", self.broker_id, self.host, self.port)
        if registry is not None:
            await registry.register(self.zk_identity(), startup_topics(self.config, self.store.topics()))
        task_status.started(self)
        await self._shutdown.wait()
        if registry is not None:
            # §3.4 shutdown 1-3: unregister, close the session, wait zkSyncTimeMs (still serving,
            # so that clients notice and stop sending).
            await registry.aclose()
        log.info("broker %d shutting down: no new connections", self.broker_id)
        accept_scope.cancel()
        for conn in list(self.connections):
            conn.stop_reading()
        with trio.move_on_after(SHUTDOWN_GRACE):
            while self.connections:
                await trio.sleep(0.01)
        conn_nursery.cancel_scope.cancel()

    def zk_identity(self) -> BrokerIdentity:
        """What this broker publishes in ZooKeeper: ``meta://<host>:<port>`` and the checksum."""
        host = advertised_host(self.config.system.host_name, self.host)
        return BrokerIdentity.master(self.broker_id, host, self.port, self.config.config_checksum)

    def shutdown(self) -> None:
        if self._shutdown is not None:
            self._shutdown.set()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await self.reload()
                    continue
                if self._shutdown.is_set():
                    log.warning("second signal: exiting at once (recovery will check the logs)")
                    os._exit(1)
                log.info("signal %s: shutting down gracefully", signal.Signals(signum).name)
                self._shutdown.set()

    async def reload(self) -> None:
        """SIGHUP: re-read the topic sections (broker.md §2.7)."""
        if not self.config_path:
            log.info("reload requested, but the broker runs without a config file")
            return
        try:
            result = await trio.to_thread.run_sync(self.config.reload, self.config_path)
        except (OSError, ValueError) as exc:
            log.error("reload failed, keeping the old configuration: %s", exc)
            return
        self.config = result.config
        self._accepted.clear()
        self.routes.clear()
        log.info("configuration reloaded: %d topic section(s) changed", len(result.changed_sections))
        if self.registry is not None and result.reloaded:
            await self._reregister(result)

    async def _reregister(self, result) -> None:
        """§2.7 3d: re-register every topic whose effective configuration changed (topics of
        removed sections are left as registered, as in Java), and publish the new checksum."""
        topics = [t for t in startup_topics(self.config, self.store.topics())
                  if result.topic_changed(t.topic)
                  and getattr(self.config.topic_config(t.topic), "section", None) is not None]
        try:
            await self.registry.reregister_topics(topics)
            await self.registry.update_config_checksum(self.config.config_checksum)
        except (KazooException, RegistrationError) as exc:
            log.error("reload: re-registration in ZooKeeper failed: %s", exc)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = Connection(self, stream, max_body=self.config.system.max_transfer_size,
                          idle_timeout=self.idle_timeout)
        self.connections.add(conn)
        try:
            await conn.run()
        except* Exception:  # a bug in one connection must not take the broker down
            log.exception("%s: connection failed", conn.peer)
        finally:
            self.connections.discard(conn)

    # --------------------------------------------------------------------------- dispatch

    def dispatch(self, conn: Connection, event: object) -> Awaitable[None] | None:
        """Handle one request. Returns an awaitable only when the request must wait before the
        next one on its connection may be read (a put that first creates its partition); the
        connection awaits it, which keeps per-partition order without a coroutine per frame."""
        kind = type(event)
        if kind is Put:
            if event.tx_key is None:
                return self._put(conn, event)
            self._transactional_put(conn, event)
        elif kind is Get:
            self._get(conn, event)
        elif kind is OffsetRequest:
            self._offset(conn, event)
        elif kind is Version:
            conn.send(encode_result(200, PROTOCOL_VERSION, event.opaque))
        elif kind is Stats:
            conn.send(self._stats(event))
        elif kind is Sync:
            self.counters.cmd_put += 1
            conn.send(encode_result(503, "No processor registered for sync: this broker is not a sync slave",
                                    event.opaque))
        elif kind is Transaction:
            self._transaction(conn, event)
        # A stray Result or Value is dropped: nothing of ours is outstanding on a connection (§2.2).
        return None

    def put_intake(self, conn: Connection) -> PutIntake | None:
        """The compiled put path for a new connection (None: every put goes through dispatch)."""
        if not self.compiled_puts:
            return None
        return PutIntake(self, conn, self.routes, self.store.ids.next_id, self._trio_sink(),
                         self.config.system.max_transfer_size, random.getrandbits(64))

    def put_failed(self, topic: str, partition: int, count: int = 1) -> None:
        self.counters.put_failed += count
        self.realtime.record("put_failed", topic, f"{self.broker_id}-{partition}", count, count)

    def puts_failed(self, conn: Connection, topic: str, partition: int, count: int,
                    error: BaseException) -> None:
        """A batch of the compiled put path failed in the store (the caller answers 500)."""
        self.put_failed(topic, partition, count)
        log.error("%s-%d: %d put(s) from %s failed: %s", topic, partition, count, conn.peer, error)

    def record_puts(self, topic: str, partition: int, count: int, nbytes: int) -> None:
        """Realtime statistics of a batch of the compiled put path (topics with stat=true)."""
        self.realtime.record("put", topic, f"{self.broker_id}-{partition}", count, count)
        self.realtime.record("message_size", topic, "*", nbytes, count)

    def _fail_put(self, conn: Connection, event: Put, partition: int, status: int, text: str) -> None:
        self.put_failed(event.topic, partition)
        log.info("%s-%d: put from %s refused: %s", event.topic, partition, conn.peer, text)
        conn.send(encode_result(status, text, event.opaque))

    def _put(self, conn: Connection, event: Put) -> Awaitable[None] | None:
        self.counters.cmd_put += 1
        topic, partition = event.topic, event.partition
        if (topic, partition) in self.closed_partitions:
            return self._fail_put(conn, event, partition, 403,
                                  f"Partition[{self.broker_id}-{partition}] has been closed")
        topic_config = self._accepted.get(topic)
        if topic_config is None:
            try:
                validate_topic(topic)
            except MetaqError as exc:
                return self._fail_put(conn, event, partition, 500, str(exc))
            topic_config = self.accepted(topic)
            if topic_config is None:
                return self._fail_put(conn, event, partition, 500, f"The server do not accept topic {topic}")
        if partition == -1:
            partition = random.randrange(topic_config.num_partitions)
        if not 0 <= partition < topic_config.num_partitions:
            return self._fail_put(conn, event, partition, 500, f"wrong partition {partition}")
        data = event.data
        limit = self.config.system.max_transfer_size
        if data is None or 20 + len(data) > limit:
            return self._fail_put(conn, event, partition, 500,
                                  f"message of {event.length} bytes is too large: a record may be at most "
                                  f"maxTransferSize={limit} bytes")
        try:
            record.check_data(event.flag, data)
        except MetaqError as exc:
            return self._fail_put(conn, event, partition, 400, f"Invalid message: {exc}")
        try:
            msg_id = self.store.ids.next_id()
        except ClockBackwardsError as exc:
            return self._fail_put(conn, event, partition, 500, str(exc))
        crc = record.checksum(data)
        if event.checksum != -1 and event.checksum != crc:
            return self._fail_put(conn, event, partition, 500, _CHECKSUM_FAILURE)
        plog = self.store.get_partition(topic, partition)
        if plog is None:
            return self._create_and_put(conn, event, topic_config, partition, msg_id, crc)
        self._submit_put(conn, event, topic_config, plog, partition, msg_id, crc)
        return None

    async def _create_and_put(self, conn: Connection, event: Put, topic_config: TopicConfig,
                              partition: int, msg_id: int, crc: int) -> None:
        topic = event.topic
        try:
            plog = await trio.to_thread.run_sync(self.store.partition, topic, partition)
        except (MetaqError, OSError) as exc:
            return self._fail_put(conn, event, partition, 500, f"put message failed: {exc}")
        if self.registry is not None:
            # §3.4 non-forced registration of an auto-created topic (no-op when known;
            # never waits for ZooKeeper on the put path).
            self.registry.register_topic_soon(TopicRegistration.from_topic_config(topic_config, topic))
        self._submit_put(conn, event, topic_config, plog, partition, msg_id, crc)

    def _submit_put(self, conn: Connection, event: Put, topic_config: TopicConfig, plog: PartitionLog,
                    partition: int, msg_id: int, crc: int) -> None:
        topic, data = event.topic, event.data
        if topic_config.stat:
            self.realtime.record("put", topic, f"{self.broker_id}-{partition}")
            self.realtime.record("message_size", topic, "*", len(data))
        item = (data, event.flag, msg_id, crc)
        reply = PutAnswers(self, conn, topic, partition, [item], [event.opaque])
        try:
            reply.request = plog.submit([item], self._trio_sink(), reply)
        except MetaqError as exc:
            return self._fail_put(conn, event, partition, 500, f"put message failed: {exc}")
        conn.begin()
        route = self.routes.get(topic)
        if route is None:
            route = self.routes[topic] = Route(topic_config.num_partitions, topic_config.stat)
        route.logs[partition] = plog  # later puts to it take the compiled path

    def _trio_sink(self) -> TrioSink:
        if self._sink is None:
            self._sink = TrioSink.current()
        return self._sink

    def engine_turn(self) -> None:
        """Called by connection readers after each receive, so that the storage engine's writer
        threads need not wait for a busy event loop to go idle: let a writer that waits for the
        GIL after its fdatasync take it (``yield_to_writers``), then answer the puts of every
        group commit finished so far (``TrioSink.deliver_ready``)."""
        yield_to_writers()
        if self._sink is not None:
            self._sink.deliver_ready()

    def _transactional_put(self, conn: Connection, event: Put) -> None:
        self.counters.cmd_put += 1
        kind = "XA" if event.tx_key.startswith("XID:") else "Local"
        self._fail_put(conn, event, event.partition, 500,
                       f"{kind} transaction '{event.tx_key}' has not been started.")

    def _transaction(self, conn: Connection, event: Transaction) -> None:
        if event.tx_type == "END":
            return  # never answered (§5.5.3)
        if event.tx_type == "BEGIN":
            self.counters.tx_begin += 1
            if event.tx_key.startswith("XID:"):
                self.counters.tx_xa_begin += 1
        conn.send(encode_result(
            500, "XAException:code=-3,msg=transactions are not enabled on this broker", event.opaque))

    def _missing(self, topic: str, partition: int) -> str:
        return f"The topic `{topic}` in partition `{partition}` is not exists"

    def _get(self, conn: Connection, event: Get) -> None:
        counters = self.counters
        counters.cmd_get += 1
        topic, partition, group = event.topic, event.partition, event.group
        self.realtime.record("get", topic, group)
        if (topic, partition) in self.closed_partitions:
            conn.send(encode_result(403, f"Partition[{self.broker_id}-{partition}] has been closed", event.opaque))
            return
        plog = self.store.get_partition(topic, partition)
        if plog is None:
            self._get_miss(topic, group)
            conn.send(encode_result(404, self._missing(topic, partition), event.opaque))
            return
        if event.max_size <= 0:
            conn.send(encode_result(400, f"Bad request,invalid max size:{event.max_size}", event.opaque))
            return
        try:
            piece = plog.slice(event.offset, event.max_size)
        except OffsetOutOfRangeError as exc:
            offset = event.offset
            if exc.before_start:
                self._moved(conn, topic, group, exc.min_offset, event.opaque)
            elif offset > exc.max_offset and (self.config.system.update_consumer_offsets or offset == LONG_MAX):
                self._moved(conn, topic, group, exc.max_offset, event.opaque)
            else:
                self._get_miss(topic, group)
                conn.send(encode_result(404, f"Could not find message at position {offset}", event.opaque))
            return
        except MetaqError as exc:
            counters.get_failed += 1
            conn.send(encode_result(500, str(exc), event.opaque))
            return
        conn.send_slice(encode_value_header(piece.length, event.opaque), piece)

    def _get_miss(self, topic: str, group: str) -> None:
        self.counters.get_miss += 1
        self.realtime.record("get_miss", topic, group)

    def _moved(self, conn: Connection, topic: str, group: str, offset: int, opaque: int) -> None:
        self.counters.cmd_offset += 1
        self.realtime.record("offset", topic, group)
        conn.send(encode_result(301, str(offset), opaque))

    def _offset(self, conn: Connection, event: OffsetRequest) -> None:
        self.counters.cmd_offset += 1
        self.realtime.record("offset", event.topic, event.group)
        plog = self.store.get_partition(event.topic, event.partition)
        if plog is None:
            conn.send(encode_result(404, self._missing(event.topic, event.partition), event.opaque))
            return
        conn.send(encode_result(200, str(plog.nearest_offset(event.offset)), event.opaque))

    # ------------------------------------------------------------------------------ stats

    def topic_infos(self) -> list[statsmod.TopicInfo]:
        by_topic: dict[str, list[PartitionLog]] = {}
        for plog in self.store.logs():
            by_topic.setdefault(plog.topic, []).append(plog)
        infos = []
        for topic, logs in by_topic.items():
            cfg = self.config.topic_config(topic)
            per = [p.statistics() for p in logs]
            infos.append(statsmod.TopicInfo(
                topic, len(logs), sum(s.message_count for s in per), sum(s.size_bytes for s in per),
                cfg.accept_publish if cfg else self.config.system.accept_publish,
                cfg.accept_subscribe if cfg else self.config.system.accept_subscribe,
                cfg is not None, True))
        for name in self.config.topics:
            if name not in by_topic and "*" not in name:
                cfg = self.config.topics[name]
                infos.append(statsmod.TopicInfo(name, 0, 0, 0, cfg.accept_publish, cfg.accept_subscribe,
                                                True, False))
        return infos

    def _stats(self, event: Stats) -> bytes:
        item = event.item
        if item == "config":
            return self._stats_config(event.opaque)
        if item == "":
            infos = self.topic_infos()
            lines = statsmod.summary_lines(
                broker_id=self.broker_id, port=self.port, started=self.started, version=PROTOCOL_VERSION,
                slave=False, connections=len(self.connections), counters=self.counters,
                total_messages=sum(i.message_count for i in infos), topics=len(infos),
                config_checksum=self.config.config_checksum)
        elif item == "topics":
            lines = statsmod.topics_lines(self.topic_infos())
        elif item == "offsets":
            lines = statsmod.offsets_lines(
                (p.topic, p.partition, p.min_offset, p.max_offset) for p in self.store.logs())
        elif item == "realtime":
            lines = statsmod.realtime_lines(self.realtime)
        elif item == "reset":
            self.realtime.reset()
            lines = ["reset ok"]
        elif item == "help":
            lines = list(statsmod.HELP_LINES)
        else:
            info = next((i for i in self.topic_infos() if i.name == item), None)
            if info is None and self.config.topic_config(item) is not None:
                info = statsmod.TopicInfo(item, 0, 0, 0, True, True, True, False)
            lines = statsmod.topic_lines(item, info, self.realtime)
        return encode_result(200, statsmod.stats_body(lines), event.opaque)

    def _stats_config(self, opaque: int) -> bytes:
        path = self.config_path
        if path is None:
            return encode_result(200, self.config.text.encode("utf-8"), opaque)
        try:
            with open(path, "rb") as fh:
                return encode_result(200, fh.read(), opaque)
        except FileNotFoundError:
            return encode_result(500, f"Config file not found:{path}", opaque)
        except OSError as exc:
            return encode_result(500, f"Read config file error:{exc}", opaque)

    # -------------------------------------------------------------------------- retention

    async def _retention_loop(self) -> None:
        """Run each topic's delete policy on its ``deleteWhen`` schedule (broker.md §1.11).

        The plan is recomputed at least every second, so topics created since (and reloads) are
        picked up; a fire time is never skipped because the next one is always after "now"."""
        while True:
            now = time.time()
            schedule: dict[str, float] = {}
            for plog in self.store.logs():
                when = self.config.topic_setting(plog.topic, "delete_when")
                if when not in schedule:
                    fire = CronExpression.parse(when).next_fire_time(_local(now))
                    schedule[when] = fire.timestamp() if fire else float("inf")
            wake = min(min(schedule.values(), default=now + 1.0), now + 1.0)
            await trio.sleep(max(0.0, wake - time.time()))
            due = {when for when, at in schedule.items() if at <= time.time()}
            if due:
                removed = await trio.to_thread.run_sync(self.run_retention, due)
                log.info("retention run for %s: %d segment(s) removed", sorted(due), removed)

    def run_retention(self, due: set[str] | None = None) -> int:
        removed = 0
        for plog in self.store.logs():
            if due is not None and self.config.topic_setting(plog.topic, "delete_when") not in due:
                continue
            policy = RetentionPolicy.parse(self.config.topic_setting(plog.topic, "delete_policy"))
            removed += len(apply_policy(plog, policy))
        return removed


def _local(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp)

