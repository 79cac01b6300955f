"""``metaq-trio zk``: the local ZooKeeper of ``serve --local`` on its own, as a real subprocess —
it starts, prints its connect string, answers ``srvr`` and a kazoo client, and stops on SIGTERM
(and SIGINT) with exit status 0, its Java child gone. Without Java/ZooKeeper it says in one line
how to install them and exits with status 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaq_server.local_zk import INSTALL_HINT, four_letter_word
from zk_util import require_zookeeper_installed

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "metaq_server.cli", "zk", "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=open(tmp_path / "zk.err", "wb"),
                            stdin=subprocess.DEVNULL, cwd=str(tmp_path), env=_env(), text=True)
    line = proc.stdout.readline().strip()     # the connect string, once it serves
    if not line:
        proc.kill()
        proc.wait()
        pytest.fail(f"no connect string; stderr:\n{(tmp_path / 'zk.err').read_text()}")
    return proc, line


def _java_children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (the ZooKeeper JVM runs in a session of its own)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry))
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_zk_serves_and_stops_cleanly(tmp_path, sig) -> None:
    require_zookeeper_installed()
    data = tmp_path / "zkdata"
    proc, connect = _start(tmp_path, "--data-dir", str(data))
    try:
        host, _, port = connect.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert four_letter_word(host, int(port), "srvr").startswith("Zookeeper version")
        children = _java_children(proc.pid)
        assert len(children) == 1

        from kazoo.client import KazooClient
        kazoo = KazooClient(hosts=connect, timeout=5)
        kazoo.start(timeout=10)
        try:
            kazoo.ensure_path("/meta/brokers")
            assert kazoo.exists("/meta/brokers") is not None
        finally:
            kazoo.stop()
            kazoo.close()

        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        deadline = time.monotonic() + 5
        while not all(_gone(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(c) for c in children), "the ZooKeeper JVM outlived the command"
        with pytest.raises(OSError):
            four_letter_word(host, int(port), "srvr", timeout=0.5)
        assert (data / "zoo.cfg").exists()             # a given data directory is kept
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_zk_without_java_says_how_to_install(tmp_path) -> None:
    env = _env(PATH=str(tmp_path))                    # no java on the PATH
    env.pop("JAVA_HOME", None)
    done = subprocess.run([sys.executable, "-m", "metaq_server.cli", "zk", "--port", "0"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and INSTALL_HINT in lines[0] and "apt-get" in lines[0]
    assert done.stdout == ""
