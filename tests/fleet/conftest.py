"""A real etcd for the fleet tests' modules, and the server replicas a test starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.device import make_device
from tests.etcd_rig import Cluster, Server, start_cluster, stop_all

__all__ = ["make_device"]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("etcd"), members=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """The servers a test starts (stopped at its end)."""
    started: list[Server] = []
    yield started
    stop_all(*started)
