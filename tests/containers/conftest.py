"""The engine every container test module shares: one dockerd (or Podman) and one
registry per module, stopped with it (``tests/container_rig.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.container_rig import Engine, start_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = start_engine(tmp_path_factory.mktemp("engine"))
    try:
        yield engine
    finally:
        engine.stop()
