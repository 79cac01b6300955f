"""``python -m metaq_core``: look into a data directory without a broker (read-only).

``info DIR`` lists every partition with its segments and offsets; ``dump DIR TOPIC PARTITION``
prints the messages of one partition. Opens the store read-only, so it is safe beside a running
broker. Never writes.
"""

from __future__ import annotations

import argparse
import sys

from metaq_core.errors import MetaqError
from metaq_core.partition import OffsetOutOfRangeError
from metaq_core.store import LogStore


def _info(args: argparse.Namespace) -> int:
    with LogStore(args.directory, read_only=True) as store:
        logs = store.logs()
        if not logs:
            print(f"{args.directory}: no partitions")
        for plog in logs:
            stats = plog.statistics()
            print(f"{plog.name:40} segments={stats.segments:<4} min={stats.min_offset:<12} "
                  f"max={stats.max_offset:<12} bytes={stats.size_bytes}")
    return 0


def _dump(args: argparse.Namespace) -> int:
    with LogStore(args.directory, read_only=True) as store:
        offset = args.offset if args.offset is not None else store.min_offset(args.topic, args.partition)
        shown = 0
        while args.limit is None or shown < args.limit:
            try:
                result = store.read(args.topic, args.partition, offset)
            except OffsetOutOfRangeError:
                break
            for msg in result.messages:
                attribute = "" if msg.attribute is None else f" attribute={msg.attribute!r}"
                print(f"offset={msg.offset} id={msg.id} flag={msg.flag}{attribute} body={msg.body[:80]!r}")
                shown += 1
                if args.limit is not None and shown >= args.limit:
                    break
            offset = result.next_offset
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaq_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="list partitions, segments and offsets")
    info.add_argument("directory")
    info.set_defaults(run=_info)
    dump = sub.add_parser("dump", help="print the messages of a partition")
    dump.add_argument("directory")
    dump.add_argument("topic")
    dump.add_argument("partition", type=int)
    dump.add_argument("--offset", type=int, help="start here (a record boundary); default: min offset")
    dump.add_argument("--limit", type=int, help="stop after this many messages")
    dump.set_defaults(run=_dump)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (KeyError, OSError, ValueError, MetaqError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
