"""A private ZooKeeper server as a child process: ``serve --local`` and the test suite.

:class:`LocalZooKeeper` runs the system's ZooKeeper (Debian's ``zookeeper`` package:
``org.apache.zookeeper.server.ZooKeeperServerMain`` from ``/usr/share/java``) on a loopback port
(a free one unless configured) with a private data directory, waits until the four-letter
command ``srvr`` says it serves, and stops it with SIGTERM, then SIGKILL. It is a context
manager in both worlds: ``with LocalZooKeeper() as zk`` (blocking; session fixtures, the CLI)
and ``async with LocalZooKeeper() as zk`` (trio; the blocking parts run in a worker thread).
broker.md §8.2 is the Java original (an in-process server on port 2181, tick 1000 ms).

When ZooKeeper or Java is missing, :class:`ZooKeeperNotInstalled` says in one line how to
install them. This module must not import kazoo or the broker: it manages a process, nothing
more; readiness is checked with a plain socket.
"""

from __future__ import annotations

import atexit
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import attrs

__all__ = ["INSTALL_HINT", "LocalZooKeeper", "ZooKeeperNotInstalled", "ZooKeeperStartError",
           "find_classpath", "find_java", "four_letter_word", "free_port", "loopback_port"]

log = logging.getLogger("metaq.local_zk")

INSTALL_HINT = "apt-get install zookeeper default-jre-headless"
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
#: Where distributions put ZooKeeper's jars (Debian first). ``$ZOOKEEPER_HOME/lib`` and
#: ``$ZOOKEEPER_HOME`` are searched before these when set.
JAR_DIRS = ("/usr/share/java", "/usr/share/zookeeper/lib", "/usr/share/zookeeper",
            "/usr/lib/zookeeper/lib", "/usr/lib/zookeeper", "/opt/zookeeper/lib", "/opt/zookeeper")
#: The environment variable that replaces the search with an explicit class path.
CLASSPATH_ENV = "METAQ_ZOOKEEPER_CLASSPATH"
STOP_GRACE = 5.0


class ZooKeeperNotInstalled(RuntimeError):
    """ZooKeeper's jars or a Java runtime were not found. ``str()`` is one line with the fix."""


class ZooKeeperStartError(RuntimeError):
    """The server process exited or did not answer ``srvr`` in time (``log_tail`` has why)."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message + (f"; last log lines:\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


# ================================================================================ discovery


def _server_jar(directory: str) -> str | None:
    """The ZooKeeper server jar in ``directory``: ``zookeeper.jar`` or ``zookeeper-3.x.y.jar``
    (not ``-jute``, ``-recipes``, ``-contrib``, ``-it``, ``-tests``, ``-sources``...)."""
    plain = os.path.join(directory, "zookeeper.jar")
    if os.path.isfile(plain):
        return plain
    versioned = sorted(p for p in glob.glob(os.path.join(directory, "zookeeper-[0-9]*.jar"))
                       if not any(tag in os.path.basename(p)
                                  for tag in ("-tests", "-sources", "-javadoc")))
    return versioned[-1] if versioned else None


def find_classpath(dirs: tuple[str, ...] | None = None) -> str:
    """The class path that runs ``ZooKeeperServerMain``; ZooKeeperNotInstalled if there is none.

    ``$METAQ_ZOOKEEPER_CLASSPATH`` wins when set. Otherwise the server jar is looked for in
    ``$ZOOKEEPER_HOME/lib``, ``$ZOOKEEPER_HOME`` and :data:`JAR_DIRS`. Debian's jar names its
    dependencies in its manifest; ``zookeeper-jute`` and an SLF4J binding (``slf4j-simple``, so
    the server log is readable) are added when present. A tarball's ``lib`` directory is used
    whole (every jar in it).
    """
    explicit = os.environ.get(CLASSPATH_ENV)
    if explicit and dirs is None:
        return explicit
    if dirs is None:
        home = os.environ.get("ZOOKEEPER_HOME")
        dirs = ((os.path.join(home, "lib"), home) if home else ()) + JAR_DIRS
    for directory in dirs:
        jar = _server_jar(directory)
        if jar is None:
            continue
        if os.path.basename(jar) == "zookeeper.jar":
            # Debian's shared /usr/share/java: the jar's manifest names its dependencies;
            # add only what the manifest leaves out (jute on some versions, an SLF4J binding).
            entries = [jar]
            for name in ("zookeeper-jute.jar", "slf4j-api.jar", "slf4j-simple.jar"):
                path = os.path.join(directory, name)
                if os.path.isfile(path):
                    entries.append(path)
        else:
            # A distribution's private lib directory (tarball): every jar in it.
            entries = [jar] + sorted(p for p in glob.glob(os.path.join(directory, "*.jar")) if p != jar)
        return os.pathsep.join(entries)
    raise ZooKeeperNotInstalled(
        f"ZooKeeper is not installed (no zookeeper.jar in {', '.join(dirs)}); "
        f"install it with: {INSTALL_HINT}")


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on the PATH; ZooKeeperNotInstalled otherwise."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = os.path.join(home, "bin", "java")
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("java")
    if found:
        return found
    raise ZooKeeperNotInstalled(
        f"No Java runtime found to run ZooKeeper (no java on PATH); install it with: {INSTALL_HINT}")


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def loopback_port(zk_connect: str | None, default: int = 2181) -> int:
    """The port ``serve --local`` should start ZooKeeper on for a ``zk.zkConnect`` value: the
    port of its first server when that server is this machine (``localhost``, ``127.x``,
    ``::1``); ``default`` (2181, Java's local mode) when ``zk_connect`` is empty. ValueError
    when it names another machine — a local server would not be the one clients look for."""
    if not zk_connect:
        return default
    first = zk_connect.partition("/")[0].split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep:
        host, port = first, str(default)
    if not (host in _LOOPBACK_NAMES or host.startswith("127.")):
        raise ValueError(f"zk.zkConnect={zk_connect} does not point at this machine; "
                         "--local starts ZooKeeper on a loopback address")
    try:
        return int(port)
    except ValueError:
        raise ValueError(f"zk.zkConnect={zk_connect}: {port!r} is not a port") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def four_letter_word(host: str, port: int, word: str = "srvr", timeout: float = 1.0) -> str:
    """Send a ZooKeeper four-letter command and return the whole answer (OSError if none)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        chunks = []
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


# ================================================================================== server


@attrs.define(eq=False)
class LocalZooKeeper:
    """One ZooKeeper server process on ``host:port``.

    ``port=0`` picks a free port (kept across :meth:`restart`). ``data_dir=None`` uses a fresh
    temporary directory that :meth:`stop` removes; a given ``data_dir`` is kept. The server log
    goes to ``<data_dir>/zookeeper.log``. ``tick_time_ms`` sets the session-timeout bounds:
    ZooKeeper grants ``2…20 × tick``, widened here to at most ``max_session_timeout_ms``.
    """

    port: int = 0
    host: str = "127.0.0.1"
    data_dir: str | None = None
    tick_time_ms: int = 1000
    max_session_timeout_ms: int = 60_000
    max_client_connections: int = 4096
    startup_timeout: float = 30.0
    java: str | None = None
    classpath: str | None = None
    jvm_args: tuple[str, ...] = ("-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

    _process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)
    _own_dir: bool = attrs.field(default=False, init=False)
    _log_file: str | None = attrs.field(default=None, init=False)

    @property
    def connect_string(self) -> str:
        """``host:port`` for ``zk.zkConnect`` (append ``/chroot`` for a private subtree)."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_file(self) -> str | None:
        return self._log_file

    # ------------------------------------------------------------------------ start

    def start(self) -> LocalZooKeeper:
        """Start the server and wait until it serves (``srvr`` answers). Blocking."""
        if self.running:
            return self
        java = self.java or find_java()
        classpath = self.classpath or find_classpath()
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="metaq-zk-")
            self._own_dir = True
        os.makedirs(os.path.join(self.data_dir, "data"), exist_ok=True)
        pick_port = self.port == 0
        for attempt in range(5):
            if pick_port:
                self.port = free_port(self.host)
            try:
                self._spawn(java, classpath)
                self._wait_ready()
                break
            except ZooKeeperStartError as exc:
                self._kill()
                if pick_port and attempt < 4 and "Address already in use" in exc.log_tail:
                    log.info("ZooKeeper port %d was taken meanwhile; trying another", self.port)
                    continue
                self._cleanup_dir()
                raise
        atexit.register(self.stop)
        log.info("ZooKeeper %s started (pid %d, data %s)", self.connect_string, self.pid, self.data_dir)
        return self

    def _config_text(self) -> str:
        assert self.data_dir is not None
        max_session = max(self.max_session_timeout_ms, 2 * self.tick_time_ms)
        return "\n".join([
            f"tickTime={self.tick_time_ms}",
            f"dataDir={os.path.join(self.data_dir, 'data')}",
            f"clientPort={self.port}",
            f"clientPortAddress={self.host}",
            f"maxClientCnxns={self.max_client_connections}",
            f"minSessionTimeout={2 * self.tick_time_ms}",
            f"maxSessionTimeout={max_session}",
            "admin.enableServer=false",       # else Jetty grabs port 8080
            "4lw.commands.whitelist=*",          # srvr for readiness; loopback only
            "autopurge.purgeInterval=0",
            "",
        ])

    def _spawn(self, java: str, classpath: str) -> None:
        assert self.data_dir is not None
        config = os.path.join(self.data_dir, "zoo.cfg")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(self._config_text())
        self._log_file = os.path.join(self.data_dir, "zookeeper.log")
        command = [java, *self.jvm_args, "-Dzookeeper.admin.enableServer=false",
                   "-Dorg.slf4j.simpleLogger.showDateTime=true",
                   "-cp", classpath, MAIN_CLASS, config]
        with open(self._log_file, "ab") as out:
            # A session of its own: the terminal's Ctrl-C reaches the broker only, which stops
            # this server last (broker.md §3.4 step 8), after unregistering through it.
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             cwd=self.data_dir)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            with open(self._log_file or "", "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 16384))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.02
        while True:
            code = self._process.poll()
            if code is not None:
                raise ZooKeeperStartError(
                    f"ZooKeeper exited with status {code} while starting on {self.connect_string}",
                    self._log_tail())
            try:
                if self.srvr().startswith("Zookeeper version"):
                    return   # "not currently serving requests" until the database is loaded
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise ZooKeeperStartError(
                    f"ZooKeeper did not answer 'srvr' on {self.connect_string} within "
                    f"{self.startup_timeout:g} s", self._log_tail())
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def srvr(self) -> str:
        """The server's answer to ``srvr`` (version, mode, node count…); OSError if none."""
        return four_letter_word(self.host, self.port, "srvr")

    # ------------------------------------------------------------------------- stop

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("ZooKeeper (pid %d) ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
            except ProcessLookupError:
                pass

    def _cleanup_dir(self) -> None:
        if self._own_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
            self._own_dir = False

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server (SIGTERM, SIGKILL after 5 s) and remove a temporary data directory
        unless ``keep_data``. Idempotent; blocking."""
        atexit.unregister(self.stop)
        if self._process is not None:
            log.info("stopping ZooKeeper %s (pid %d)", self.connect_string, self._process.pid)
        self._kill()
        if not keep_data:
            self._cleanup_dir()

    def restart(self) -> LocalZooKeeper:
        """Stop and start again on the same port and data directory (sessions survive on disk)."""
        self.stop(keep_data=True)
        return self.start()

    # ------------------------------------------------------------------ context managers

    def __enter__(self) -> LocalZooKeeper:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> LocalZooKeeper:
        import trio

        try:
            return await trio.to_thread.run_sync(self.start)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.stop)
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        import trio

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.stop)
