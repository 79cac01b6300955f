"""ZooKeeper for the tests: one real server per test session, one chroot per test.

Fixtures (register them in ``conftest.py`` with ``pytest_plugins = ["zk_util"]``, or import
them with ``from zk_util import *``):

* ``zk_server`` (session): a :class:`~metaq_server.local_zk.LocalZooKeeper` on a free loopback
  port (tick 250 ms, so sessions may be as short as 0.5 s). One per process, however many
  modules import the fixture.
* ``zk_hosts`` (function): a connect string ``127.0.0.1:<port>/t-<uuid>`` whose chroot exists
  and is removed after the test — tests never see each other's nodes.
* ``zk_kazoo`` (function): a plain, blocking kazoo client on that chroot, to arrange and
  inspect nodes (call it through ``trio.to_thread.run_sync`` from async tests).

Rule: when ZooKeeper (or Java) is missing, the tests that need it are skipped with the reason —
except in CI (``CI=true``), where they fail: a CI run must never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import trio
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from metaq_server.local_zk import (
    LocalZooKeeper, ZooKeeperNotInstalled, ZooKeeperStartError, find_classpath, find_java,
)

__all__ = ["TICK_MS", "PartitionProxy", "close_session", "dump_tree", "in_ci", "new_kazoo", "require_zookeeper",
           "require_zookeeper_installed", "zk_hosts",
           "zk_kazoo", "zk_server"]

#: Tick of the test servers: ZooKeeper grants session timeouts from 2 to 20 ticks (widened).
TICK_MS = 250

_shared: LocalZooKeeper | None = None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"ZooKeeper is required in CI (CI=true): {reason}", pytrace=False)
    pytest.skip(reason)


def require_zookeeper_installed() -> None:
    """Skip (fail in CI) unless ZooKeeper's jars and a Java runtime are found. Cheap."""
    try:
        find_java()
        find_classpath()
    except ZooKeeperNotInstalled as exc:
        _unavailable(str(exc))


def require_zookeeper(**options: object) -> LocalZooKeeper:
    """Start a private server (``LocalZooKeeper(**options)``); skip — or fail in CI — when
    ZooKeeper cannot run here. The caller stops it."""
    server = LocalZooKeeper(tick_time_ms=TICK_MS, **options)  # type: ignore[arg-type]
    try:
        return server.start()
    except (ZooKeeperNotInstalled, ZooKeeperStartError) as exc:
        _unavailable(str(exc))
        raise  # not reached


@pytest.fixture(scope="session")
def zk_server() -> Iterator[LocalZooKeeper]:
    global _shared
    if _shared is None or not _shared.running:
        _shared = require_zookeeper()
    yield _shared
    _shared.stop()   # idempotent: every module that imported the fixture tears down the same one


def new_kazoo(hosts: str, timeout: float = 10.0) -> KazooClient:
    """A started kazoo client (blocking) for arranging and checking nodes."""
    client = KazooClient(hosts=hosts, timeout=timeout)
    client.start(timeout=10)
    return client


@pytest.fixture
def zk_hosts(zk_server: LocalZooKeeper) -> Iterator[str]:
    chroot = f"/t-{uuid.uuid4().hex[:12]}"
    admin = new_kazoo(zk_server.connect_string)
    try:
        admin.ensure_path(chroot)
        yield zk_server.connect_string + chroot
    finally:
        try:
            if zk_server.running:
                admin.delete(chroot, recursive=True)
        finally:
            admin.stop()
            admin.close()


@pytest.fixture
def zk_kazoo(zk_hosts: str) -> Iterator[KazooClient]:
    client = new_kazoo(zk_hosts)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def close_session(hosts: str, client_id: tuple[int, bytes]) -> None:
    """Really end a session (server side): connect a second client with the same session id
    and password, then close it. The first client then sees LOST and gets a new session.
    (kazoo's testing ``expire_session`` only simulates expiry in the client.) Blocking."""
    other = KazooClient(hosts=hosts, client_id=client_id, timeout=10)
    other.start(timeout=10)
    other.stop()
    other.close()


class PartitionProxy:
    """A loopback TCP proxy to a ZooKeeper server that a test can cut and heal: a network
    partition between one client and a server that keeps running, so the *server* expires
    the session (really), and the client learns it when it reconnects after :meth:`heal`.

    ``await nursery.start(proxy.run)`` returns the proxy's ``host:port``.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._cut = False
        self._scopes: set[trio.CancelScope] = set()

    @property
    def connect_string(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every connection and refuse (accept and close) new ones."""
        self._cut = True
        for scope in list(self._scopes):
            scope.cancel()

    def heal(self) -> None:
        self._cut = False

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.connect_string)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        async with downstream:
            if self._cut:
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    upstream = await trio.open_tcp_stream(*self.upstream)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
                        nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)
                finally:
                    self._scopes.discard(scope)

    @staticmethod
    async def _pump(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
        try:
            async for chunk in source:
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


def dump_tree(client: KazooClient, path: str = "/") -> dict[str, tuple[bytes, bool]]:
    """Every node under ``path`` (included): ``{path: (data, ephemeral)}``. Blocking; a node
    deleted while it is walked is left out."""
    result: dict[str, tuple[bytes, bool]] = {}

    def walk(node: str) -> None:
        try:
            data, stat = client.get(node)
            children = client.get_children(node)
        except NoNodeError:
            return
        result[node] = (data, stat.ephemeralOwner != 0)
        for child in sorted(children):
            walk(f"{node.rstrip('/')}/{child}")

    walk(path)
    return result
