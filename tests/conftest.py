"""Shared fixtures. The compiled codec must really be the one under test (unless the pure twin is
forced with METAQ_PURE_PYTHON=1): a silent fallback would hide a broken build."""

from __future__ import annotations

import os

import pytest

import metaq_core
from zk_util import zk_hosts, zk_kazoo, zk_server  # noqa: F401  (the real ZooKeeper fixtures)


def pytest_report_header(config: pytest.Config) -> str:
    return f"metaq_core record codec: {metaq_core.IMPLEMENTATION}"


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("METAQ_PURE_PYTHON") != "1":
        assert metaq_core.IMPLEMENTATION == "cython", "the compiled codec did not load"
        from metaq_core import _crc, _record, _segment  # noqa: F401  (must import)


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return str(path)
