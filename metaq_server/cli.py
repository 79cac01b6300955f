"""The ``metaq-trio`` command line: ``serve`` runs a broker; ``stats`` and ``version`` ask one.

argparse (standard library) is enough for a handful of subcommands and flags. Configuration
errors exit with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

DEFAULT_PORT = 8123
DEFAULT_DATA_DIR = os.path.join("~", "meta")


def _serve(args: argparse.Namespace) -> int:
    import trio

    from metaq_core.errors import MetaqError
    from metaq_server.broker import Broker
    from metaq_server.config import BrokerConfig, ConfigError

    try:
        if args.config:
            config = BrokerConfig.load(args.config)
            overrides = {}
            if args.port is not None:
                overrides["server_port"] = args.port
            if args.host is not None:
                overrides["host_name"] = args.host
            if args.data_dir is not None:
                overrides["data_path"] = os.path.expanduser(args.data_dir)
            if overrides:
                config = config.with_system(**overrides)
        else:
            config = BrokerConfig.default(
                data_dir=os.path.expanduser(args.data_dir or DEFAULT_DATA_DIR),
                port=DEFAULT_PORT if args.port is None else args.port,
                host=args.host or "127.0.0.1")
    except (ConfigError, OSError) as exc:
        print(f"metaq-trio: configuration error: {exc}", file=sys.stderr)
        return 2
    broker = Broker(config, config_path=args.config)
    try:
        broker.open_store()
    except (MetaqError, OSError, ValueError) as exc:
        print(f"metaq-trio: cannot open the data directory: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(broker.run)
    except OSError as exc:
        print(f"metaq-trio: {exc}", file=sys.stderr)
        return 1
    return 0


def request(host: str, port: int, frame: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send one request frame and return (status, body) of its ``result`` (blocking; CLI use)."""
    from metaq_core.wire import FrameDecoder, Result

    decoder = FrameDecoder()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection without answering")
            decoder.receive_data(data)
            event = decoder.next_event()
            if isinstance(event, Result):
                return event.status, event.body or b""


def _ask(args: argparse.Namespace, frame: bytes) -> int:
    try:
        status, body = request(args.host, args.port, frame)
    except OSError as exc:
        print(f"metaq-trio: cannot reach the broker at {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(body.decode("utf-8", "replace"))
    if body and not body.endswith(b"\n"):
        sys.stdout.write("\n")
    return 0 if status == 200 else 1


def _stats(args: argparse.Namespace) -> int:
    from metaq_core.wire import Stats, encode
    return _ask(args, encode(Stats(args.item or "", 1)))


def _version(args: argparse.Namespace) -> int:
    from metaq_core.wire import Version, encode
    return _ask(args, encode(Version(1)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaq-trio", description="A MetaQ 1.4.4-compatible message broker.")
    parser.add_argument("--log-level", default=os.environ.get("METAQ_LOG_LEVEL", "INFO"),
                        help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a broker")
    serve.add_argument("-c", "--config", help="server.ini (default: an embedded single-broker config)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--data-dir", help=f"data directory (default {DEFAULT_DATA_DIR})")
    serve.set_defaults(run=_serve)

    for name, run, text in (("stats", _stats, "print a running broker's statistics"),
                            ("version", _version, "print a running broker's version")):
        cmd = sub.add_parser(name, help=text)
        if name == "stats":
            cmd.add_argument("item", nargs="?", help="topics, offsets, realtime, reset, help, config or a topic")
        cmd.add_argument("--host", default="127.0.0.1")
        cmd.add_argument("--port", type=int, default=DEFAULT_PORT)
        cmd.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
