"""The ``metaq-trio`` command line: ``serve`` runs a broker; ``stats`` and ``version`` ask one;
``zk`` runs the local ZooKeeper of ``serve --local`` on its own.

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
    if args.local:
        return _serve_local(args, config)
    return _run_broker(args, config)


def _serve_local(args: argparse.Namespace, config) -> int:
    """``serve --local`` (broker.md §8.2): a private ZooKeeper for this broker, started first
    and stopped last, on the loopback port of ``zk.zkConnect`` (2181 without a config file;
    ``--zk-port`` overrides, 0 = any free port)."""
    import attrs

    from metaq_server.local_zk import (
        LocalZooKeeper, ZooKeeperNotInstalled, ZooKeeperStartError, loopback_port,
    )

    try:
        port = args.zk_port if args.zk_port is not None else loopback_port(config.zookeeper.zk_connect)
        server = LocalZooKeeper(port=port).start()
    except (ValueError, ZooKeeperNotInstalled, ZooKeeperStartError) as exc:
        print(f"metaq-trio: cannot start the local ZooKeeper: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"metaq-trio: local ZooKeeper at {server.connect_string} (data {server.data_dir})",
              file=sys.stderr)
        chroot = (config.zookeeper.zk_connect or "").partition("/")[2]
        zookeeper = attrs.evolve(config.zookeeper, zk_enable=True,
                                 zk_connect=server.connect_string + (f"/{chroot}" if chroot else ""))
        return _run_broker(args, attrs.evolve(config, zookeeper=zookeeper))
    finally:
        server.stop()   # §3.4 shutdown step 8: after the broker has unregistered


def _run_broker(args: argparse.Namespace, config) -> int:
    import trio

    from metaq_core.errors import MetaqError
    from metaq_server.broker import Broker
    from zkmeta.bridge import ZkConnectError
    from zkmeta.registry import RegistrationError

    broker = Broker(config, config_path=args.config)
    try:
        broker.open_store()
    except (MetaqError, OSError, ValueError) as exc:
        print(f"metaq-trio: cannot open the data directory: {exc}", file=sys.stderr)
        return 2
    failure: BaseException | None = None
    try:
        trio.run(broker.run)
    except* (ZkConnectError, RegistrationError, OSError) as group:
        failure = group
    while isinstance(failure, BaseExceptionGroup):   # trio nurseries wrap errors in groups
        failure = failure.exceptions[0]
    if failure is not None:
        print(f"metaq-trio: {failure}", file=sys.stderr)
        return 1
    return 0


def _zk(args: argparse.Namespace) -> int:
    """``metaq-trio zk``: the private ZooKeeper of ``serve --local`` on its own, in the
    foreground, until SIGINT or SIGTERM; then stopped cleanly (exit 0). A given ``--data-dir``
    is kept (sessions and znodes survive a restart); without one a temporary directory is used
    and removed at the end."""
    import signal
    import threading

    from metaq_server.local_zk import (
        INSTALL_HINT, LocalZooKeeper, ZooKeeperNotInstalled, ZooKeeperStartError,
    )

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir)) if args.data_dir else None
    server = LocalZooKeeper(port=args.port, data_dir=data_dir)
    try:
        try:
            server.start()
        except ZooKeeperNotInstalled as exc:   # one line that ends with the apt-get command
            message = str(exc) if INSTALL_HINT in str(exc) else f"{exc}; install it with: {INSTALL_HINT}"
            print(f"metaq-trio: {message}", file=sys.stderr)
            return 2
        except (ZooKeeperStartError, OSError) as exc:
            print(f"metaq-trio: cannot start the local ZooKeeper: {exc}", file=sys.stderr)
            return 1
        print(server.connect_string, flush=True)
        print(f"metaq-trio: ZooKeeper at {server.connect_string} (pid {server.pid}, data "
              f"{server.data_dir}); stop with Ctrl-C or SIGTERM", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            if not server.running:
                print(f"metaq-trio: ZooKeeper exited unexpectedly (log: {server.log_file})",
                      file=sys.stderr)
                return 1
        return 0
    finally:
        server.stop(keep_data=data_dir is not None)   # SIGTERM, SIGKILL after 5 s
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    serve.add_argument("--local", action="store_true",
                       help="start a private ZooKeeper (Debian's zookeeper package) for this broker "
                            "and register in it (port: zk.zkConnect's, else 2181)")
    serve.add_argument("--zk-port", type=int,
                       help="with --local: the ZooKeeper port (0 = any free port)")
    serve.set_defaults(run=_serve)

    zk = sub.add_parser("zk", help="run the local ZooKeeper of serve --local on its own, in the foreground")
    zk.add_argument("--port", type=int, default=2181, help="port (default 2181; 0 = any free port)")
    zk.add_argument("--data-dir", help="data directory, kept at exit (default: a temporary one, removed)")
    zk.set_defaults(run=_zk)

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
