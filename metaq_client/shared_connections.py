"""A ``ConnectionPool`` whose connections can be released: what ZooKeeper discovery needs to
close the connection of a broker that left the cluster or moved to another address (broker.md
§3.5, §4.4 step 5), while other users of the same broker keep theirs (Java's
``connectWithRef``/``closeWithRef``).

Holders ``acquire(url, holder)`` and ``release(url, holder)``; once the last holder of a URL has
released it, its connection is closed (requests waiting on it fail with ConnectionClosedError)
and a later request opens a new one. URLs nobody ever acquired — direct-connect mode, ``stats``
calls — behave exactly as in ``ConnectionPool``. ``connect_all`` waits for several connections
at once (discovery connects before it switches). This module only manages connection lifetimes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import trio

from metaq_client.connection import Connection, ConnectionPool, ConnectionSettings, _BrokerLink
from metaq_client.errors import BrokerUnavailableError

log = logging.getLogger("metaq.client")


class SharedConnectionPool(ConnectionPool):
    def __init__(self, nursery: trio.Nursery, settings: ConnectionSettings | None = None) -> None:
        super().__init__(nursery, settings)
        self._scopes: dict[str, trio.CancelScope] = {}
        self._holders: dict[str, set[object]] = {}

    async def connection(self, url: str) -> Connection:
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = _BrokerLink(url, self.settings, self._counters)
            scope = self._scopes[url] = trio.CancelScope()
            self._nursery.start_soon(self._supervise, link, scope, name=f"metaq connection {url}")
        return await link.get()

    @staticmethod
    async def _supervise(link: _BrokerLink, scope: trio.CancelScope) -> None:
        with scope:
            await link.supervise()

    def acquire(self, url: str, holder: object) -> None:
        """Record that ``holder`` uses ``url`` (the connection itself opens on first use)."""
        self._holders.setdefault(url, set()).add(holder)

    def release(self, url: str, holder: object) -> None:
        """``holder`` no longer uses ``url``; the last release closes the connection."""
        holders = self._holders.get(url)
        if holders is None:
            return
        holders.discard(holder)
        if not holders:
            del self._holders[url]
            self.close(url)

    def close(self, url: str) -> None:
        """Close the connection to ``url`` now (a no-op when there is none)."""
        link = self._links.pop(url, None)
        scope = self._scopes.pop(url, None)
        if scope is not None:
            scope.cancel()
        if link is not None:
            log.info("%s: connection closed (no longer used)", url)

    def holders(self, url: str) -> int:
        return len(self._holders.get(url, ()))

    def urls(self) -> list[str]:
        """The URLs with a connection (or a connection attempt) right now."""
        return sorted(self._links)


async def connect_all(pool: ConnectionPool, urls: Iterable[str], *, attempts: int = 3) -> list[str]:
    """Open connections to ``urls`` in parallel and wait until each is up, trying for at most
    ``attempts`` × the pool's connect timeout (1.4.6: 3 attempts of 4 s). Returns the URLs that
    could not be reached (their links keep trying in the background)."""
    failed: list[str] = []
    deadline_each = max(pool.settings.connect_timeout, 0.1) * attempts

    async def one(url: str) -> None:
        with trio.move_on_after(deadline_each):
            while True:
                try:
                    await pool.connection(url)
                    return
                except BrokerUnavailableError:
                    await trio.sleep(min(0.1, pool.settings.max_reconnect_delay))
        failed.append(url)

    async with trio.open_nursery() as nursery:
        for url in sorted(urls):
            nursery.start_soon(one, url)
    if failed:
        log.warning("cannot connect to %s", ", ".join(sorted(failed)))
    return failed

