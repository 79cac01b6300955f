"""kazoo ⇄ trio: one kazoo client driven from a trio event loop without ever blocking it.

``open_zk(settings)`` connects (waiting at most the configured connection timeout) and yields a
:class:`TrioZk`. Its calls (``create``, ``get``, ``set``, ``delete``, …) start kazoo's
asynchronous operations and wait for their completion on a trio event: kazoo's completion
thread only hands the result over with ``TrioToken.run_sync_soon``. Blocking kazoo calls with no
asynchronous variant (connect, close, recursive delete, recipe constructors) run in worker
threads (``trio.to_thread.run_sync``). Connection-state changes and watches reach trio through
memory channels, in the order kazoo saw them.

What this module must not do: know MetaQ's layout or retry policy (that is ``registry`` and
``paths``), call a blocking kazoo method on the trio thread, or run trio code in kazoo's threads
(a kazoo callback does nothing but hand its event on, as kazoo's own recipes recommend).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio
from kazoo.client import KazooClient
from kazoo.exceptions import (
    ConnectionClosedError, ConnectionLoss, KazooException, NodeExistsError, NoNodeError,
    NotEmptyError, SessionExpiredError, ZookeeperError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState, WatchedEvent, ZnodeStat
from kazoo.retry import KazooRetry

__all__ = [
    "ConnectionClosedError",
    "ConnectionLoss",
    "KazooException",
    "KazooState",
    "NoNodeError",
    "NodeExistsError",
    "NotEmptyError",
    "SessionExpiredError",
    "TrioZk",
    "ZkConnectError",
    "ZkSettings",
    "ZnodeStat",
    "ZookeeperError",
    "open_zk",
]

log = logging.getLogger("metaq.zk")


class ZkConnectError(ConnectionError):
    """The first connection to ZooKeeper did not succeed within the connection timeout."""


class _ZooKeeperConfigLike(Protocol):
    zk_connect: str | None
    zk_session_timeout_ms: int
    zk_connection_timeout_ms: int


@attrs.frozen
class ZkSettings:
    """How to reach ZooKeeper (broker.md §2.3).

    ``hosts`` is a connect string ``host:port[,host:port…][/chroot]``; a chroot suffix is passed
    to kazoo, which prefixes every path with it (it must exist: :func:`open_zk` creates it).
    ``session_timeout_ms`` is asked of the server (which clamps it to ``2…20 × tickTime``
    unless configured otherwise); ``connection_timeout_ms`` bounds the first connection only —
    later reconnections are kazoo's job and never give up while the client is open.
    """

    hosts: str
    session_timeout_ms: int = 30_000
    connection_timeout_ms: int = 30_000
    #: Longest pause between two reconnection attempts (kazoo's default is an hour).
    max_reconnect_delay: float = 1.0

    @classmethod
    def from_config(cls, config: _ZooKeeperConfigLike) -> ZkSettings:
        """Settings from a ``ZooKeeperConfig`` (``zk_connect`` must be set)."""
        if not config.zk_connect:
            raise ValueError("zk.zkConnect is empty: no ZooKeeper servers to connect to")
        return cls(hosts=config.zk_connect, session_timeout_ms=config.zk_session_timeout_ms,
                   connection_timeout_ms=config.zk_connection_timeout_ms)

    @property
    def session_timeout(self) -> float:
        return self.session_timeout_ms / 1000.0

    @property
    def connection_timeout(self) -> float:
        return self.connection_timeout_ms / 1000.0

    @property
    def chroot(self) -> str:
        """The chroot suffix of ``hosts`` (``""`` when there is none)."""
        _, slash, chroot = self.hosts.partition("/")
        return ("/" + chroot.strip("/")) if slash and chroot.strip("/") else ""


def _deliver(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: object) -> None:
    """From a kazoo thread: run ``fn(*args)`` on the trio thread soon; drop it if trio is gone."""
    try:
        token.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        pass


def _send_nowait(channel: trio.MemorySendChannel[Any], value: object) -> None:
    try:
        channel.send_nowait(value)
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass  # the subscriber has gone


class TrioZk:
    """A connected kazoo client bound to the trio run that created it.

    Data arguments accept ``bytes`` or ``str`` (encoded as UTF-8, as MetaQ stores every value).
    kazoo's exceptions propagate unchanged (``NodeExistsError``, ``NoNodeError``,
    ``NotEmptyError``, ``ConnectionLoss``, ``SessionExpiredError``, …; re-exported here).
    Cancelling a call abandons the wait, not the request: ZooKeeper may still apply it.
    """

    def __init__(self, settings: ZkSettings, client: KazooClient) -> None:
        self.settings = settings
        #: The kazoo client. Call its blocking methods only through :meth:`run_sync`.
        self.kazoo = client
        self._token = trio.lowlevel.current_trio_token()
        self._subscribers: set[trio.MemorySendChannel[KazooState]] = set()
        self._closed = False
        client.add_listener(self._on_state)

    # ------------------------------------------------------------------------ state

    @property
    def state(self) -> KazooState:
        """kazoo's simplified state: CONNECTED, SUSPENDED or LOST."""
        return self.kazoo.state

    @property
    def connected(self) -> bool:
        return self.kazoo.connected

    @property
    def client_id(self) -> tuple[int, bytes] | None:
        """``(session id, password)`` of the current session while connected, else None."""
        return self.kazoo.client_id

    @property
    def session_id(self) -> int | None:
        client_id = self.kazoo.client_id
        return client_id[0] if client_id else None

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_state(self, state: KazooState) -> None:
        # kazoo's connection thread: must not block, so only hand the state over.
        _deliver(self._token, self._broadcast, state)

    def _broadcast(self, state: KazooState) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(state)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._subscribers.discard(channel)  # the subscriber closed its end

    def state_changes(self) -> trio.MemoryReceiveChannel[KazooState]:
        """A channel of every later connection-state change (CONNECTED, SUSPENDED, LOST).

        LOST means the session ended (expired, or the client was closed); kazoo then
        reconnects with a new session and reports CONNECTED. Close the channel when done
        (the subscription ends with it). The buffer is unbounded: state changes are rare and
        none may be lost. The channel ends (``EndOfChannel``) when the client is closed.
        """
        send, receive = trio.open_memory_channel[KazooState](math.inf)
        self._subscribers.add(send)
        return receive

    # -------------------------------------------------------------------- operations

    async def _wait(self, async_result: Any) -> Any:
        done = trio.Event()

        def on_done(_result: Any) -> None:
            _deliver(self._token, done.set)

        async_result.rawlink(on_done)
        try:
            await done.wait()
        except BaseException:
            async_result.unlink(on_done)
            raise
        return async_result.get_nowait()

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking kazoo call (or any blocking function) in a worker thread."""
        return await trio.to_thread.run_sync(fn, *args)

    async def create(self, path: str, data: bytes | str = b"", *, ephemeral: bool = False,
                     makepath: bool = False) -> str:
        """Create a node; parents are created (persistent, empty, open ACL) with ``makepath``."""
        return await self._wait(self.kazoo.create_async(
            path, _bytes(data), ephemeral=ephemeral, makepath=makepath))

    async def ensure_path(self, path: str) -> None:
        """Create ``path`` and its parents (persistent, empty) where missing."""
        await self._wait(self.kazoo.ensure_path_async(path))

    async def exists(self, path: str) -> ZnodeStat | None:
        return await self._wait(self.kazoo.exists_async(path))

    async def exists_watch(self, path: str) -> tuple[ZnodeStat | None, trio.Event]:
        """``exists`` plus a one-shot watch: the event is set (on the trio thread) when the
        node is created, deleted or changed, or the watch is dropped by a session change."""
        changed = trio.Event()

        def watch(_event: WatchedEvent) -> None:
            _deliver(self._token, changed.set)

        stat = await self._wait(self.kazoo.exists_async(path, watch=watch))
        return stat, changed

    async def get(self, path: str) -> tuple[bytes, ZnodeStat]:
        return await self._wait(self.kazoo.get_async(path))

    async def get_children(self, path: str) -> list[str]:
        return await self._wait(self.kazoo.get_children_async(path))

    async def set(self, path: str, data: bytes | str, version: int = -1) -> ZnodeStat:
        return await self._wait(self.kazoo.set_async(path, _bytes(data), version))

    async def delete(self, path: str, version: int = -1, *, recursive: bool = False) -> None:
        if recursive:
            await self.run_sync(lambda: self.kazoo.delete(path, version, recursive=True))
        else:
            await self._wait(self.kazoo.delete_async(path, version))

    async def sync(self, path: str) -> None:
        """Make the server this session talks to catch up with the leader for ``path``."""
        await self._wait(self.kazoo.sync_async(path))

    # ----------------------------------------------------------------------- watches

    @asynccontextmanager
    async def watch_children(self, path: str) -> AsyncIterator[trio.MemoryReceiveChannel[list[str]]]:
        """The children of ``path`` now and after every change, as sorted lists, until exit.

        ``path`` must exist (create it first, as MetaQ's producers and consumers do): kazoo's
        ``ChildrenWatch`` stops when the node is missing or deleted.
        """
        from kazoo.recipe.watchers import ChildrenWatch

        send, receive = trio.open_memory_channel[list[str]](math.inf)
        stopped = False

        def on_children(children: list[str]) -> bool | None:
            if stopped:
                return False  # tells kazoo to stop watching
            _deliver(self._token, _send_nowait, send, sorted(children))
            return None

        await self.run_sync(ChildrenWatch, self.kazoo, path, on_children)
        try:
            async with receive:
                yield receive
        finally:
            stopped = True
            send.close()

    @asynccontextmanager
    async def watch_data(self, path: str) -> AsyncIterator[
            trio.MemoryReceiveChannel[tuple[bytes | None, ZnodeStat | None]]]:
        """``(data, stat)`` of ``path`` now and after every change (``(None, None)`` while it
        does not exist), until exit."""
        from kazoo.recipe.watchers import DataWatch

        send, receive = trio.open_memory_channel[tuple[bytes | None, ZnodeStat | None]](math.inf)
        stopped = False

        def on_data(data: bytes | None, stat: ZnodeStat | None) -> bool | None:
            if stopped:
                return False
            _deliver(self._token, _send_nowait, send, (data, stat))
            return None

        await self.run_sync(DataWatch, self.kazoo, path, on_data)
        try:
            async with receive:
                yield receive
        finally:
            stopped = True
            send.close()

    # ------------------------------------------------------------------------ close

    async def aclose(self) -> None:
        """Close the session (its ephemeral nodes vanish) and free the client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.kazoo.remove_listener(self._on_state)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_stop_and_close, self.kazoo)
        for channel in list(self._subscribers):
            channel.close()
        self._subscribers.clear()


def _bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _stop_and_close(client: KazooClient) -> None:
    try:
        client.stop()
    except Exception:  # a half-dead connection must not prevent freeing the client
        log.warning("closing the ZooKeeper session failed", exc_info=True)
    finally:
        client.close()


def _new_client(settings: ZkSettings, hosts: str) -> KazooClient:
    retry = KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=settings.max_reconnect_delay)
    return KazooClient(hosts=hosts, timeout=settings.session_timeout, connection_retry=retry,
                       command_retry=KazooRetry(max_tries=3, delay=0.05, max_delay=1.0))


def _start(client: KazooClient, timeout: float) -> None:
    # Runs in a worker thread. kazoo's start() stops and closes the client on a time-out.
    client.start(timeout=timeout)


def _ensure_chroot(settings: ZkSettings) -> None:
    """Create the chroot node of ``settings.hosts`` (and its parents) with a short-lived client
    that has no chroot: kazoo cannot create its own chroot, and Java clients would fail too."""
    chroot = settings.chroot
    if not chroot:
        return
    servers = settings.hosts.partition("/")[0]
    client = _new_client(settings, servers)
    try:
        client.start(timeout=settings.connection_timeout)
        client.ensure_path(chroot)
    finally:
        _stop_and_close(client)


@asynccontextmanager
async def open_zk(settings: ZkSettings) -> AsyncIterator[TrioZk]:
    """Connect to ZooKeeper and yield a :class:`TrioZk`; close the session on exit.

    Raises :class:`ZkConnectError` when no connection is established within
    ``settings.connection_timeout_ms`` (broker.md §3.4: that aborts startup).
    """
    log.info("connecting to ZooKeeper at %s (session timeout %d ms)", settings.hosts,
             settings.session_timeout_ms)
    try:
        if settings.chroot:
            await trio.to_thread.run_sync(_ensure_chroot, settings)
        client = _new_client(settings, settings.hosts)
        await trio.to_thread.run_sync(_start, client, settings.connection_timeout)
    except (KazooTimeoutError, ConnectionLoss) as exc:
        raise ZkConnectError(
            f"cannot connect to ZooKeeper at {settings.hosts} within "
            f"{settings.connection_timeout_ms} ms ({exc or type(exc).__name__})") from None
    zk = TrioZk(settings, client)
    log.info("connected to ZooKeeper at %s, session 0x%x", settings.hosts, zk.session_id or 0)
    try:
        yield zk
    finally:
        await zk.aclose()
