"""The broker's entries in ZooKeeper: registration, re-registration, unregistration (broker.md §3.4).

:class:`BrokerRegistry` writes a broker's ephemeral nodes in the order of §3.4 —
``ids/<id>/master``, the legacy ``ids/<id>`` data, ``master_config_checksum``, then for each
topic ``topics/<topic>/<id>-m``, ``topics-pub/…`` and ``topics-sub/…`` (as acceptPublish /
acceptSubscribe say) — keeps them there across session expiry (every node re-created on the new
session), re-registers topics whose configuration changed, and removes exactly its own nodes at
shutdown: an ephemeral node is deleted only when its owner is our session, the persistent
``ids/<id>`` only when it still holds our URI, and nothing at all after a failed registration.

"Node already exists" (§3.4's recommendation): when the node holds the data we would write and
belongs to another session — typically our own previous process, whose session has not expired
yet — wait (watching the node) for up to one session timeout; with other data, or a persistent
node in the way, give up at once. Another session's node is never deleted.

What this module must not do: read ``server.ini`` or the store (the broker hands it
:class:`TopicRegistration` values; :func:`startup_topics` builds them from a config-like object),
import ``metaq_server``, or block the trio loop (all ZooKeeper I/O goes through ``bridge``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio
from kazoo.exceptions import BadVersionError

from zkmeta.bridge import (
    KazooException, KazooState, NodeExistsError, NoNodeError, NotEmptyError, TrioZk, ZkSettings,
    open_zk,
)
from zkmeta.paths import (
    DEFAULT_ROOT, ZkPaths, broker_uri, encode_checksum, encode_num_parts, encode_topic_broker,
    master_name, slave_name,
)

__all__ = [
    "BrokerIdentity",
    "BrokerRegistry",
    "NodeConflictError",
    "RegistrationError",
    "RegistryStatistics",
    "TopicRegistration",
    "advertised_host",
    "open_registry",
    "startup_topics",
]

log = logging.getLogger("metaq.zk.registry")


# ================================================================================== values


@attrs.frozen
class TopicRegistration:
    """What the registry writes for one topic: its partition count and the two accept flags."""

    topic: str
    num_partitions: int
    accept_publish: bool = True
    accept_subscribe: bool = True

    @classmethod
    def from_topic_config(cls, config: Any, topic: str | None = None) -> TopicRegistration:
        """From a ``TopicConfig``-like object (``topic``, ``num_partitions``, ``accept_publish``,
        ``accept_subscribe``); ``topic`` overrides its name (a wildcard section's config)."""
        return cls(topic=topic if topic is not None else config.topic,
                   num_partitions=config.num_partitions,
                   accept_publish=config.accept_publish, accept_subscribe=config.accept_subscribe)


@attrs.frozen
class BrokerIdentity:
    """Who registers: a master (``slave_id=None``) or async slave ``slave_id`` of ``broker_id``.

    ``uri`` is ``meta://host:port`` (:func:`zkmeta.paths.broker_uri`); ``config_checksum`` the
    CRC-32 of server.ini, published by masters only.
    """

    broker_id: int
    uri: str
    config_checksum: int = 0
    slave_id: int | None = None

    @classmethod
    def master(cls, broker_id: int, host: str, port: int, config_checksum: int) -> BrokerIdentity:
        return cls(broker_id=broker_id, uri=broker_uri(host, port), config_checksum=config_checksum)

    @property
    def is_master(self) -> bool:
        return self.slave_id is None

    @property
    def name(self) -> str:
        """The child name under the topic nodes: ``<id>-m`` or ``<id>-s<N>``."""
        if self.slave_id is None:
            return master_name(self.broker_id)
        return slave_name(self.broker_id, self.slave_id)


class _TopicConfigSource(Protocol):
    def topic_names(self) -> list[str]: ...
    def topic_config(self, topic: str) -> Any: ...
    def default_topic_config(self, topic: str) -> Any: ...


def startup_topics(config: _TopicConfigSource, disk_topics: Iterable[str]) -> list[TopicRegistration]:
    """The topics to register at startup, in §3.4's order: every configured topic (sorted;
    wildcard sections are patterns, not topics), then every topic that only has stores on disk
    (sorted), each with its effective configuration (``[system]`` defaults when none matches)."""
    configured = sorted(name for name in config.topic_names() if "*" not in name)
    known = set(configured)
    on_disk = sorted({topic for topic in disk_topics if topic not in known})
    result = []
    for topic in configured + on_disk:
        topic_config = config.topic_config(topic) or config.default_topic_config(topic)
        result.append(TopicRegistration.from_topic_config(topic_config, topic=topic))
    return result


def advertised_host(host_name: str | None, listen_host: str | None) -> str:
    """The host to publish in ``ids/<id>/master``: ``hostName`` when configured; else the
    address the broker listens on, unless that is a wildcard (``0.0.0.0``/``::``), in which case
    the machine's outbound non-loopback address (§2.2's default), or its resolved host name."""
    if host_name:
        return host_name
    if listen_host and listen_host not in ("0.0.0.0", "::", ""):
        return listen_host
    try:
        # No packet is sent: connecting a UDP socket only selects the outbound interface.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
            if not address.startswith("127.") and address != "0.0.0.0":
                return address
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class RegistrationError(Exception):
    """Registration failed (startup must abort: "Register broker to zk failed")."""


class NodeConflictError(RegistrationError):
    """A node we must create is held by someone else (another session, or a persistent node)."""

    def __init__(self, path: str, data: bytes, owner: int, reason: str) -> None:
        super().__init__(f"{path} already exists with data {data!r} (owner session 0x{owner:x}): {reason}")
        self.path = path
        self.data = data
        self.owner = owner


@attrs.frozen
class RegistryStatistics:
    registered: bool
    failed: bool
    session_id: int | None
    topics: int
    #: Full registrations written: 1 after startup, +1 per session expiry survived.
    registrations: int
    #: Topic registrations written (startup, auto-created topics, reloads, re-registrations).
    topic_writes: int
    #: Times a create met our own data under another session and waited for it to go.
    waits: int


# ================================================================================ registry


class BrokerRegistry:
    """One broker's registration in ZooKeeper. Get one from :meth:`open` or :func:`open_registry`.

    Life cycle: ``open`` connects (the broker does this before loading stores);
    :meth:`register` writes everything (after the broker listens); :meth:`register_topic` /
    :meth:`register_topic_soon` add a topic auto-created by a put; :meth:`reregister_topics`
    and :meth:`update_config_checksum` follow a reload; :meth:`aclose` unregisters, closes the
    session and waits ``zkSyncTimeMs`` (also done when the ``async with`` block exits).
    Every mutation runs under one lock, so background re-registration never interleaves with
    the broker's calls.
    """

    def __init__(self, zk: TrioZk, *, paths: ZkPaths, sync_time: float,
                 session_timeout: float | None = None) -> None:
        self.zk = zk
        self.paths = paths
        #: Seconds to wait after closing the session at shutdown (``zk.zkSyncTimeMs``).
        self.sync_time = sync_time
        #: How long a create waits for a stale node holding our data (one session timeout).
        self.session_timeout = (zk.settings.session_timeout if session_timeout is None
                                else session_timeout)
        self._lock = trio.Lock()
        self._identity: BrokerIdentity | None = None
        self._topics: dict[str, TopicRegistration] = {}
        self._registered = False
        self._failed = False
        self._closed = False
        self._synced_session: int | None = None
        self._dirty = False
        self._background = trio.CancelScope()
        self._tasks: trio.Nursery | None = None
        self._registrations = 0
        self._topic_writes = 0
        self._waits = 0

    # ------------------------------------------------------------------------ opening

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: ZkSettings, *, root: str = DEFAULT_ROOT,
                   sync_time: float = 5.0) -> AsyncIterator[BrokerRegistry]:
        """Connect (``ZkConnectError`` after the connection timeout) and yield a registry that
        follows the session; on exit :meth:`aclose` (unregister, close, wait ``sync_time``)."""
        async with open_zk(settings) as zk, trio.open_nursery() as nursery:
            registry = cls(zk, paths=ZkPaths(root), sync_time=sync_time)
            await nursery.start(registry._run_background)
            try:
                yield registry
            finally:
                await registry.aclose()

    async def _run_background(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        states = self.zk.state_changes()
        with self._background, states:
            async with trio.open_nursery() as tasks:
                self._tasks = tasks
                task_status.started()
                async for state in states:
                    try:
                        await self._on_state(state)
                    except Exception:   # never let a registry bug take the broker down
                        log.exception("broker %d: handling ZooKeeper state %s failed",
                                      self._broker_id(), state)

    # ----------------------------------------------------------------------- queries

    @property
    def identity(self) -> BrokerIdentity | None:
        return self._identity

    @property
    def registered(self) -> bool:
        """Whether :meth:`register` succeeded (and the registry is not closed)."""
        return self._registered and not self._closed

    @property
    def failed(self) -> bool:
        """Whether :meth:`register` failed: shutdown then deletes nothing."""
        return self._failed

    @property
    def session_id(self) -> int | None:
        return self.zk.session_id

    @property
    def topics(self) -> Mapping[str, TopicRegistration]:
        """Topics registered (or being registered), in registration order."""
        return dict(self._topics)

    def statistics(self) -> RegistryStatistics:
        return RegistryStatistics(
            registered=self.registered, failed=self._failed, session_id=self.session_id,
            topics=len(self._topics), registrations=self._registrations,
            topic_writes=self._topic_writes, waits=self._waits)

    # ------------------------------------------------------------------- registering

    async def register(self, identity: BrokerIdentity, topics: Iterable[TopicRegistration]) -> None:
        """§3.4 steps 3–7: the broker node, the legacy ``ids/<id>`` data and the config
        checksum (masters), then ``topics`` in the given order (see :func:`startup_topics`),
        then any topic :meth:`register_topic` recorded meanwhile.

        Raises :class:`RegistrationError` (startup must abort); the registry then remembers
        the failure, and :meth:`aclose` deletes nothing.
        """
        if self._registered or self._failed or self._closed:
            raise RuntimeError("register() may be called once, on an open registry")
        async with self._lock:
            self._identity = identity
            earlier = self._topics
            self._topics = {t.topic: t for t in topics}
            for name, registration in earlier.items():
                self._topics.setdefault(name, registration)
            session = self.zk.session_id
            try:
                await self._write_everything()
            except BaseException as exc:
                # Whatever stopped us (ZooKeeper, a conflict, a bad name, cancellation), the
                # nodes may be someone else's: shutdown must delete nothing.
                self._failed = True
                log.error("broker %d: register broker to zk failed: %r", identity.broker_id, exc)
                if isinstance(exc, (KazooException, ValueError)):
                    raise RegistrationError(f"Register broker to zk failed: {exc!r}") from exc
                raise
            self._registered = True
            self._synced_session = session
            log.info("broker %d registered in ZooKeeper as %s (%s), %d topic(s), session 0x%x",
                     identity.broker_id, identity.name, identity.uri, len(self._topics), session or 0)

    async def register_topic(self, topic: TopicRegistration) -> bool:
        """Register a topic seen for the first time (a put auto-created its store): non-forced,
        so a topic already known costs one dict lookup and no ZooKeeper call. Returns whether
        its nodes were written now. Never raises for ZooKeeper trouble: a failed write is
        logged and retried when the connection comes back."""
        if topic.topic in self._topics or self._failed or self._closed:
            return False
        self._topics[topic.topic] = topic
        if not self._registered:
            return False   # register() writes it
        return await self._write_topic_logged(topic)

    def register_topic_soon(self, topic: TopicRegistration) -> None:
        """:meth:`register_topic` without waiting: for the put path, which must not wait for
        ZooKeeper. A no-op when the topic is already known."""
        if topic.topic in self._topics or self._failed or self._closed or self._tasks is None:
            return
        self._topics[topic.topic] = topic
        if self._registered:
            self._tasks.start_soon(self._write_topic_logged, topic)

    async def _write_topic_logged(self, topic: TopicRegistration) -> bool:
        async with self._lock:
            if self._closed or self._topics.get(topic.topic) != topic:
                return False
            try:
                await self._write_topic(topic)
                return True
            except (KazooException, RegistrationError, ValueError) as exc:
                self._dirty = True
                log.error("broker %d: registering topic %s in ZooKeeper failed (retried on "
                          "reconnection): %r", self._broker_id(), topic.topic, exc)
                return False

    async def reregister_topics(self, topics: Iterable[TopicRegistration]) -> list[str]:
        """Forced registration after a reload (§2.7 3d): for each topic whose registration
        differs from the one in ZooKeeper, delete its three nodes and write them again; equal
        ones are left alone, new ones registered. Returns the topics rewritten. Raises
        ``KazooException``/``RegistrationError`` on failure (the reload reports it)."""
        rewritten = []
        async with self._lock:
            if self._failed or self._closed:
                return rewritten
            for topic in topics:
                previous = self._topics.get(topic.topic)
                if previous == topic:
                    if self._registered and self._dirty:
                        await self._write_topic(topic)   # after a failed write: idempotent, no churn
                    continue
                self._topics[topic.topic] = topic
                if not self._registered:
                    continue
                if previous is not None:
                    await self._delete_topic(previous)
                await self._write_topic(topic)
                rewritten.append(topic.topic)
        if rewritten:
            log.info("broker %d: re-registered topic(s) %s", self._broker_id(), ", ".join(rewritten))
        return rewritten

    async def update_config_checksum(self, checksum: int) -> None:
        """Publish a new ``master_config_checksum`` (every config load and reload, §3.3)."""
        async with self._lock:
            identity = self._identity
            if identity is None or self._failed or self._closed:
                return
            self._identity = attrs.evolve(identity, config_checksum=checksum)
            if self._registered and identity.is_master:
                await self._claim(self.paths.master_config_checksum(identity.broker_id),
                                  encode_checksum(checksum))

    # ----------------------------------------------------------------- the writes

    def _broker_id(self) -> int:
        return self._identity.broker_id if self._identity is not None else -1

    async def _write_everything(self) -> None:
        identity = self._identity
        assert identity is not None
        paths = self.paths
        if identity.is_master:
            await self._claim(paths.master(identity.broker_id), identity.uri.encode("utf-8"))
            await self._set_or_create(paths.broker_id_node(identity.broker_id), identity.uri.encode("utf-8"))
            await self._claim(paths.master_config_checksum(identity.broker_id),
                              encode_checksum(identity.config_checksum))
        else:
            assert identity.slave_id is not None
            await self._claim(paths.slave(identity.broker_id, identity.slave_id),
                              identity.uri.encode("utf-8"))
        for topic in list(self._topics.values()):
            await self._write_topic(topic)
        self._registrations += 1
        self._dirty = False

    async def _write_topic(self, topic: TopicRegistration) -> None:
        paths, name = self.paths, self._name()
        await self._claim(paths.topic_broker(topic.topic, name), encode_num_parts(topic.num_partitions))
        data = encode_topic_broker(topic.num_partitions, name)
        for accepted, path in ((topic.accept_publish, paths.topic_pub_broker(topic.topic, name)),
                               (topic.accept_subscribe, paths.topic_sub_broker(topic.topic, name))):
            if accepted:
                await self._claim(path, data)
            else:
                await self._delete_ours(path)
        self._topic_writes += 1

    async def _delete_topic(self, topic: TopicRegistration) -> None:
        paths, name = self.paths, self._name()
        for path in (paths.topic_broker(topic.topic, name), paths.topic_pub_broker(topic.topic, name),
                     paths.topic_sub_broker(topic.topic, name)):
            await self._delete_ours(path)

    def _name(self) -> str:
        assert self._identity is not None
        return self._identity.name

    async def _set_or_create(self, path: str, data: bytes) -> None:
        """The persistent ``ids/<id>`` (made as the parent of ``master``): set its data."""
        try:
            await self.zk.set(path, data)
        except NoNodeError:
            try:
                await self.zk.create(path, data, makepath=True)
            except NodeExistsError:
                await self.zk.set(path, data)

    async def _claim(self, path: str, data: bytes) -> None:
        """Create the ephemeral ``path`` with ``data`` (parents on demand), as §3.4 says.

        Already ours (a create retried after a connection loss): its data is made ``data``.
        Another session's with the same data: watch it and retry until it goes, for at most
        one session timeout. Other data, or a persistent node: NodeConflictError at once.
        """
        zk = self.zk
        deadline = trio.current_time() + self.session_timeout
        warned = False
        while True:
            try:
                await zk.create(path, data, ephemeral=True, makepath=True)
                return
            except NodeExistsError:
                pass
            stat, changed = await zk.exists_watch(path)
            if stat is None:
                continue   # gone meanwhile: create again
            try:
                existing, stat = await zk.get(path)
            except NoNodeError:
                continue
            owner = stat.ephemeralOwner
            if owner != 0 and owner == zk.session_id:
                if existing != data:
                    await zk.set(path, data, version=stat.version)
                return
            if owner == 0:
                raise NodeConflictError(path, existing, owner, "a persistent node is in the way")
            if existing != data:
                raise NodeConflictError(path, existing, owner,
                                        "another broker (session) holds it with other data")
            now = trio.current_time()
            if now >= deadline:
                raise NodeConflictError(
                    path, existing, owner,
                    f"it still belongs to another session after {self.session_timeout:g} s")
            if not warned:
                warned = True
                self._waits += 1
                log.warning("%s exists with our data but belongs to session 0x%x (a previous run "
                            "whose session has not expired?); waiting up to %.1f s for it to go",
                            path, owner, deadline - now)
            with trio.move_on_at(min(deadline, now + 1.0)):
                await changed.wait()

    async def _delete_ours(self, path: str) -> bool:
        """Delete the ephemeral ``path`` if our session owns it; leave anybody else's alone."""
        zk = self.zk
        try:
            _, stat = await zk.get(path)
        except NoNodeError:
            return False
        if stat.ephemeralOwner == 0 or stat.ephemeralOwner != zk.session_id:
            log.info("%s belongs to session 0x%x, not ours: left in place", path, stat.ephemeralOwner)
            return False
        try:
            await zk.delete(path, version=stat.version)
        except (NoNodeError, BadVersionError):
            return False
        return True

    # ------------------------------------------------------------------ the session

    async def _on_state(self, state: KazooState) -> None:
        if state == KazooState.LOST:
            if self._registered and not self._closed:
                log.warning("broker %d: ZooKeeper session lost; every node is re-created on the "
                            "new session", self._broker_id())
        elif state == KazooState.SUSPENDED:
            if self._registered and not self._closed:
                log.warning("broker %d: ZooKeeper connection suspended", self._broker_id())
        elif state == KazooState.CONNECTED:
            await self._resync()

    async def _resync(self) -> None:
        """After a (re)connection: rewrite everything on a new session, or after failures."""
        async with self._lock:
            if not self._registered or self._closed or self._failed:
                return
            session = self.zk.session_id
            if session == self._synced_session and not self._dirty:
                return
            new_session = session != self._synced_session
            try:
                await self._write_everything()
            except (KazooException, RegistrationError) as exc:
                self._dirty = True
                log.error("broker %d: re-registration in ZooKeeper failed (retried on the next "
                          "reconnection): %s", self._broker_id(), exc)
                return
            self._synced_session = session
            log.info("broker %d: %s in ZooKeeper (session 0x%x, %d topic(s))", self._broker_id(),
                     "re-registered on a new session" if new_session else "registration repaired",
                     session or 0, len(self._topics))

    # -------------------------------------------------------------------- shutdown

    async def _unregister(self) -> None:
        """§3.4 shutdown step 1; every error is logged and ignored."""
        identity = self._identity
        assert identity is not None
        paths = self.paths

        async def quietly(coro: Any) -> Any:
            try:
                return await coro
            except KazooException as exc:
                log.warning("broker %d: unregistration step failed: %s", identity.broker_id, exc)
                return None

        if identity.is_master:
            master_deleted = await quietly(self._delete_ours(paths.master(identity.broker_id)))
            await quietly(self._delete_ours(paths.master_config_checksum(identity.broker_id)))
            if master_deleted:
                await quietly(self._release_id_node(identity))
        else:
            assert identity.slave_id is not None
            await quietly(self._delete_ours(paths.slave(identity.broker_id, identity.slave_id)))
        for topic in self._topics.values():
            await quietly(self._delete_topic(topic))

    async def _release_id_node(self, identity: BrokerIdentity) -> None:
        """Delete ``ids/<id>``, or write ``""`` into it while slaves remain — only while it
        still names us (another master may have taken the id meanwhile)."""
        path = self.paths.broker_id_node(identity.broker_id)
        try:
            data, stat = await self.zk.get(path)
        except NoNodeError:
            return
        if data != identity.uri.encode("utf-8"):
            return
        try:
            await self.zk.delete(path, version=stat.version)
        except NotEmptyError:
            await self.zk.set(path, b"", version=stat.version)
        except (NoNodeError, BadVersionError):
            pass

    async def aclose(self) -> None:
        """Shutdown (§3.4 steps 1–3): unregister (only if registration succeeded), close the
        session, then sleep ``sync_time`` so that clients notice. Idempotent.

        Unregistering and closing are shielded from cancellation and bounded by one session
        timeout (ZooKeeper may be unreachable); the final sleep is not shielded.
        """
        if self._closed:
            return
        self._closed = True
        self._background.cancel()
        registered = self._registered and not self._failed
        with trio.CancelScope(shield=True):
            with trio.move_on_after(max(self.session_timeout, 1.0)) as bound:
                async with self._lock:
                    if registered:
                        await self._unregister()
            if bound.cancelled_caught:
                log.warning("broker %d: unregistration from ZooKeeper timed out; the session "
                            "close removes the ephemeral nodes", self._broker_id())
            await self.zk.aclose()
        if registered:
            log.info("broker %d: unregistered from ZooKeeper; waiting zkSyncTimeMs (%g s)",
                     self._broker_id(), self.sync_time)
            if self.sync_time > 0:
                await trio.sleep(self.sync_time)


class _ZooKeeperConfigLike(Protocol):
    zk_connect: str | None
    zk_session_timeout_ms: int
    zk_connection_timeout_ms: int
    zk_sync_time_ms: int
    zk_enable: bool
    zk_root: str


@asynccontextmanager
async def open_registry(zk_config: _ZooKeeperConfigLike, *,
                        sync_time: float | None = None) -> AsyncIterator[BrokerRegistry | None]:
    """The broker's entry point: a :class:`BrokerRegistry` for a ``ZooKeeperConfig``, or
    None — without connecting at all — when ``zk.zkEnable=false`` (§3.4's recommendation).

    ``sync_time`` (seconds) overrides ``zk.zkSyncTimeMs`` (tests use 0).
    """
    if not zk_config.zk_enable:
        log.info("zk.zkEnable=false: not registering in ZooKeeper (not connecting)")
        yield None
        return
    settings = ZkSettings.from_config(zk_config)
    if sync_time is None:
        sync_time = zk_config.zk_sync_time_ms / 1000.0
    async with BrokerRegistry.open(settings, root=zk_config.zk_root, sync_time=sync_time) as registry:
        yield registry
