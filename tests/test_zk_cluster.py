"""Live balancing of one consumer group over a changing cluster (broker.md §4.4), with real
ZooKeeper, three real in-process brokers of four partitions each, a producer that never stops,
and consumers that join, leave, crash and come back:

  3 consumers (two in this process, one in a child process) → one closed → the child killed
  (SIGKILL, then its session closed so that its ephemeral nodes vanish) → one added →
  a broker stopped → the broker back on another port.

After each change every partition has exactly one owner within a bounded time — the DEFAULT
assignment of the live consumers, in ZooKeeper and in what each consumer fetches — and no
partition is ever fetched by two consumers of this process at once. At the end every message
the producer got an acknowledgement for has been consumed, and the only messages consumed twice
are the ones the killed consumer had consumed but not committed.

Run as ``python test_zk_cluster.py child <zk hosts> <dir>`` this module is that child consumer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import trio

from metaq_client import ConsumerConfig
from metaq_client.errors import MetaqClientError
from test_zk_client import (
    FAST, TOPIC, brokers_running, fetched, kz, owners, partition_names, wait_for, zk_client,
)
from zk_util import close_session
from zkmeta import balance

GROUP = "live"
REPO = Path(__file__).resolve().parent.parent


class LiveConsumer:
    """A consumer of GROUP in this process with its own ZooKeeper session; ``close`` is a
    graceful shutdown (commit, release, unregister)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[bytes] = []
        self.consumer = None
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    @property
    def consumer_id(self) -> str:
        return f"{GROUP}_{self.name}"

    async def run(self, hosts: str, tmp_path: Path, *, task_status: trio.TaskStatus) -> None:
        try:
            with self._scope:
                config = ConsumerConfig(max_delay_fetch_time=0.05, commit_offset_period=0.2, consumer_id=self.name)
                async with zk_client(hosts, tmp_path) as client, client.consumer(GROUP, config) as consumer:
                    await consumer.subscribe(TOPIC, lambda message: self.got.append(message.body))
                    self.consumer = consumer
                    task_status.started(self)
                    await trio.sleep_forever()
        finally:
            self.consumer = None
            self._done.set()

    async def close(self) -> None:
        self._scope.cancel()
        await self._done.wait()


class ChildConsumer:
    """A consumer of GROUP in a child process, killed with SIGKILL (no commit, no unregistering)."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.consumer_id: str | None = None
        self.client_id: tuple[int, bytes] | None = None
        self.ready = trio.Event()
        self.process: trio.Process | None = None

    async def run(self, hosts: str, directory: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(directory / "child.log", "wb") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, __file__, "child", hosts, str(directory)], stdout=subprocess.PIPE, stderr=log,
                cwd=str(REPO), env=env)
            try:
                pending = b""
                async for chunk in self.process.stdout:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._line(line.decode())
            finally:
                with trio.CancelScope(shield=True):
                    self.kill()
                    await self.process.wait()

    def _line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "M":
            self.got.append(rest.encode())
        elif kind == "READY":
            consumer_id, session, password = rest.split(" ")
            self.consumer_id, self.client_id = consumer_id, (int(session), bytes.fromhex(password))
            self.ready.set()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)


async def test_live_balancing_over_a_changing_cluster(zk_server, zk_hosts, zk_kazoo, tmp_path) -> None:
    published: set[bytes] = set()
    overlaps: list[str] = []
    live: dict[str, LiveConsumer] = {}
    ever: list[LiveConsumer] = []
    child = ChildConsumer()
    child_dir = tmp_path / "child"
    child_dir.mkdir()

    async def produce(stop: trio.Event) -> None:
        async with zk_client(zk_hosts, tmp_path) as client, client.producer() as producer:
            for number in range(1_000_000):
                if stop.is_set():
                    return
                body = b"m%07d" % number        # every attempt its own body: a retry is a new message
                try:
                    with trio.fail_after(3):
                        result = await producer.send(TOPIC, body)
                    if result.success:
                        published.add(body)
                except (MetaqClientError, trio.TooSlowError):
                    pass                        # e.g. the broker being stopped: not acknowledged
                await trio.sleep(0.004)

    async def watch_overlaps() -> None:
        while True:
            seen: dict[str, str] = {}
            for name, member in list(live.items()):
                if member.consumer is None:
                    continue
                for partition in fetched(member.consumer):
                    if partition in seen:
                        overlaps.append(f"{partition}: {seen[partition]} and {name}")
                    seen[partition] = name
            await trio.sleep(0.005)

    async def balanced(broker_ids: list[int], with_child: bool) -> None:
        everything = partition_names(broker_ids)

        async def check() -> bool:
            ids = [m.consumer_id for m in live.values()] + ([child.consumer_id] if with_child else [])
            expected = balance.full_assignment("DEFAULT", ids, everything)
            zk_owners = await owners(zk_kazoo, GROUP)
            if zk_owners != {p: c for c, parts in expected.items() for p in parts}:
                return False
            return all(m.consumer is not None and fetched(m.consumer) == set(expected[m.consumer_id])
                       for m in live.values())

        async def stable() -> bool:   # holds, and still holds a moment later
            if not await check():
                return False
            await trio.sleep(0.2)
            return await check()
        await wait_for(stable, timeout=20)

    async def start(nursery: trio.Nursery, name: str) -> None:
        live[name] = await nursery.start(LiveConsumer(name).run, zk_hosts, tmp_path)
        ever.append(live[name])

    async def some_traffic() -> None:
        target = len(published) + 40
        with trio.fail_after(10):
            while len(published) < target:
                await trio.sleep(0.01)

    with trio.fail_after(80):
        async with brokers_running(zk_hosts, tmp_path, [1, 2, 3]) as brokers, trio.open_nursery() as nursery:
            stop = trio.Event()
            nursery.start_soon(produce, stop)
            nursery.start_soon(watch_overlaps)
            await start(nursery, "a")
            await start(nursery, "b")
            nursery.start_soon(child.run, zk_hosts, child_dir)
            with trio.fail_after(20):
                await child.ready.wait()
            await balanced([1, 2, 3], with_child=True)          # 3 consumers, 12 partitions
            await some_traffic()

            await live.pop("a").close()                         # one closed
            await balanced([1, 2, 3], with_child=True)
            await some_traffic()

            child.kill()                                        # one killed: its session ends too
            await child.process.wait()
            await kz(close_session, zk_server.connect_string, child.client_id)
            await balanced([1, 2, 3], with_child=False)
            await some_traffic()

            await start(nursery, "d")                           # one added
            await balanced([1, 2, 3], with_child=False)
            await some_traffic()

            await brokers.stop(3)                               # a broker stopped
            await balanced([1, 2], with_child=False)
            await some_traffic()

            await brokers.start(3)                              # ... and back, on another port
            await balanced([1, 2, 3], with_child=False)
            await some_traffic()

            stop.set()
            everyone = [child.got] + [m.got for m in ever]

            async def all_consumed() -> bool:
                return published <= {body for got in everyone for body in got}
            await wait_for(all_consumed, timeout=20)
            for member in list(live.values()):
                await member.close()
            nursery.cancel_scope.cancel()

    assert overlaps == []
    assert len(published) > 200
    counts = Counter()
    for got in everyone:
        counts.update(got)
    duplicates = {body for body, n in counts.items() if n > 1}
    # each consumer of this process got every message at most once, and messages came twice only
    # where the killed consumer had consumed them without committing
    for member_got in everyone[1:]:
        assert len(member_got) == len(set(member_got))
    assert duplicates <= set(child.got)


def _child(hosts: str, directory: str) -> None:
    """The child consumer: print READY with its id and session, then M <body> per message."""
    async def main() -> None:
        async with zk_client(hosts, Path(directory)) as client, client.consumer(GROUP, FAST) as consumer:
            await consumer.subscribe(TOPIC, lambda message: print("M", message.body.decode(), flush=True))
            session, password = client.source.zk.client_id
            print("READY", consumer.consumer_id, session, password.hex(), flush=True)
            await trio.sleep_forever()
    trio.run(main)


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _child(*sys.argv[2:4])
