"""Fetching channel metadata over real HTTP, and the trust a device keeps between fetches."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import ChannelUnavailable, ReleaseError
from reconciler.release.channel import init_channel, sign_channel
from reconciler.release.client import ChannelTrust, fetch_metadata, fetch_trusted
from reconciler.release.keys import generate_keypair, load_trusted_keys
from tests.httpserver import ChannelServer

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


class Publisher:
    def __init__(self, tmp: Path) -> None:
        self.key, self.pub = generate_keypair(tmp / "keys", "release")
        self.dir = tmp / "channel"
        self.archive = tmp / "archive"
        self.archive.mkdir()
        init_channel(self.dir, "stable")
        self.trusted = load_trusted_keys([self.pub])

    def sign(self, at: datetime = T0, days: int = 30) -> Path:
        """Publish a new serial and keep a copy of it (an attacker could replay it)."""
        doc = sign_channel(self.dir, [self.key], timedelta(days=days), now=at)
        copy = self.archive / f"{doc['signed']['serial']}.json"
        shutil.copy(self.dir / "metadata.json", copy)
        return copy

    def serve_old(self, copy: Path) -> None:
        shutil.copy(copy, self.dir / "metadata.json")


@pytest.fixture()
def publisher(tmp_path: Path) -> Publisher:
    return Publisher(tmp_path)


@pytest.fixture()
def server(publisher: Publisher) -> Iterator[ChannelServer]:
    srv = ChannelServer(publisher.dir)
    yield srv
    srv.stop()


def test_fetched_metadata_is_verified_and_its_serial_and_time_remembered(
    publisher: Publisher, server: ChannelServer, tmp_path: Path,
) -> None:
    publisher.sign()
    trust_file = tmp_path / "data/channel-trust.json"
    meta = fetch_trusted(server.url, "stable", publisher.trusted, frozenset(),
                         T0 + timedelta(hours=1), trust_file)
    assert meta.serial == 1
    trust = ChannelTrust.load(trust_file)
    assert trust.min_serial("stable") == 1 and trust.trusted_time == T0


def test_replayed_older_metadata_is_refused_and_the_trust_is_unchanged(
    publisher: Publisher, server: ChannelServer, tmp_path: Path,
) -> None:
    old = publisher.sign()
    publisher.sign(at=T0 + timedelta(days=1))
    trust_file = tmp_path / "trust.json"
    fetch_trusted(server.url, "stable", publisher.trusted, frozenset(), T0 + timedelta(days=2),
                  trust_file)
    before = trust_file.read_bytes()
    publisher.serve_old(old)
    with pytest.raises(ReleaseError, match="serial 1 is lower than 2"):
        fetch_trusted(server.url, "stable", publisher.trusted, frozenset(),
                      T0 + timedelta(days=2), trust_file)
    assert trust_file.read_bytes() == before


def test_expired_metadata_served_by_the_channel_is_refused(
    publisher: Publisher, server: ChannelServer, tmp_path: Path,
) -> None:
    publisher.sign(days=1)
    with pytest.raises(ReleaseError, match="expired"):
        fetch_trusted(server.url, "stable", publisher.trusted, frozenset(),
                      T0 + timedelta(days=3), tmp_path / "trust.json")
    assert not (tmp_path / "trust.json").exists()


def test_a_device_booting_in_1970_still_refuses_metadata_older_than_it_has_seen(
    publisher: Publisher, server: ChannelServer, tmp_path: Path,
) -> None:
    old = publisher.sign(days=1)
    publisher.sign(at=T0 + timedelta(days=10), days=30)
    trust_file = tmp_path / "trust.json"
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    meta = fetch_trusted(server.url, "stable", publisher.trusted, frozenset(), epoch, trust_file)
    assert meta.clock_note == ""  # nothing trusted yet: the clock cannot be judged
    meta = fetch_trusted(server.url, "stable", publisher.trusted, frozenset(), epoch, trust_file)
    assert "device clock (1970-01-01T00:00:00Z) is behind" in meta.clock_note
    publisher.serve_old(old)
    with pytest.raises(ReleaseError, match=r"expired at .*\(device clock .* is behind"):
        fetch_metadata(server.url, publisher.trusted, frozenset(), epoch, None,
                       ChannelTrust.load(trust_file).trusted_time)


def test_metadata_for_another_channel_is_refused(
    publisher: Publisher, server: ChannelServer, tmp_path: Path,
) -> None:
    publisher.sign()
    with pytest.raises(ReleaseError, match="is for channel 'stable'.*follows 'beta'"):
        fetch_trusted(server.url, "beta", publisher.trusted, frozenset(), T0, tmp_path / "t.json")


def test_an_unreachable_channel_is_a_temporary_failure(publisher: Publisher) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ChannelUnavailable) as caught:
        fetch_metadata(f"http://127.0.0.1:{port}", publisher.trusted, frozenset(), T0, None, None,
                       timeout=1.0)
    assert caught.value.delay > 0


def test_a_stalled_metadata_answer_times_out(
    publisher: Publisher, server: ChannelServer,
) -> None:
    publisher.sign()
    server.set_faults(match="metadata.json", stall_at=10, stall_seconds=5)
    with pytest.raises(ChannelUnavailable, match="ReadTimeout"):
        fetch_metadata(server.url, publisher.trusted, frozenset(), T0, None, None, timeout=0.3)


def test_endless_metadata_is_cut_off_at_the_size_limit(
    publisher: Publisher, server: ChannelServer,
) -> None:
    publisher.sign()
    server.set_faults(match="metadata.json", endless=True)
    with pytest.raises(ReleaseError, match="larger than"):
        fetch_metadata(server.url, publisher.trusted, frozenset(), T0, None, None)


def test_a_missing_metadata_file_is_a_temporary_failure(
    publisher: Publisher, server: ChannelServer,
) -> None:
    with pytest.raises(ChannelUnavailable, match="HTTP 404"):
        fetch_metadata(server.url, publisher.trusted, frozenset(), T0, None, None)
