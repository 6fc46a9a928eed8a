"""The channel pin: the device config names the followed channel, and refusals are recorded.

A simulated device (``init_device``) whose channel directory is served by a real
HTTP server process on 127.0.0.1, reached through the device's port map; the
reconcile passes run in this process (``Reconciler.run_pass``) on a clock that
moves forward two minutes per pass, so every pass fetches the channel again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.audit import AuditReader, AuditRecord
from reconciler.channelwatch import TRUST_FILE, ChannelWatch
from reconciler.config import load_device
from reconciler.reconcile import Reconciler
from reconciler.release.channel import sign_channel
from reconciler.release.client import ChannelTrust
from reconciler.sim.device import CHANNEL_PORT, init_device
from reconciler.store import StateStore
from tests.httpserver import ChannelServer

BETA_REFUSAL = "channel metadata: is for channel 'beta', this device follows 'stable'"


class PinnedDevice:
    """A simulated device, its served channel, and passes on a clock that moves on."""

    def __init__(self, root: Path, server: ChannelServer) -> None:
        self.root = root
        self.server = server
        self.now = datetime.now(UTC)
        self.reboots: list[str] = []
        self._reconciler: Reconciler | None = None

    @property
    def channel(self) -> Path:
        return self.root / "channel"

    def clock(self) -> datetime:
        return self.now

    @property
    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            self._reconciler = Reconciler(load_device(self.root / "device.yaml"),
                                          rebooter=self.reboots.append, clock=self.clock)
        return self._reconciler

    def restart(self) -> None:
        """A new daemon process: nothing kept in memory."""
        self._reconciler = None

    def passes(self, count: int) -> list[str]:
        """Run ``count`` passes, two minutes apart; the kinds of their actions."""
        kinds = []
        for _ in range(count):
            self.now += timedelta(minutes=2)
            result = self.reconciler.run_pass("resync")
            kinds.append(result.action.kind if result.action else "none")
        return kinds

    def sign_as(self, name: str) -> None:
        """Sign the channel's releases under the channel name ``name`` (trusted key)."""
        draft = json.loads((self.channel / "draft.json").read_text())
        draft["channel"] = name
        (self.channel / "draft.json").write_text(json.dumps(draft))
        sign_channel(self.channel, [self.root / "keys" / "release.key"])

    def follow(self, name: str) -> None:
        config = self.root / "device.yaml"
        config.write_text(config.read_text() + f"channel:\n  name: {name}\n")
        self.restart()

    def want(self, version: str) -> None:
        spec = self.root / "spec.yaml"
        spec.write_text(re.sub(r"version: \S+", f"version: {version}", spec.read_text(), count=1))

    def records(self) -> list[AuditRecord]:
        device = load_device(self.root / "device.yaml")
        return list(AuditReader(StateStore(device.data_dir), device.audit_dir).records())

    def refusals(self) -> list[AuditRecord]:
        return [r for r in self.records() if r.action == "channel-refused"]

    def trust(self) -> ChannelTrust:
        return ChannelTrust.load(self.root / "data" / TRUST_FILE)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[PinnedDevice]:
    root = tmp_path / "dev"
    init_device(root)
    (root / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    (root / "run" / "boot_id").write_text("boot-1\n")
    server = ChannelServer(root / "channel")
    try:
        (root / "run" / "ports.json").write_text(
            json.dumps({CHANNEL_PORT: server.url.removeprefix("http://")}))
        yield PinnedDevice(root, server)
    finally:
        server.stop()


def test_a_device_follows_the_stable_channel_when_its_config_names_none(
    dev: PinnedDevice,
) -> None:
    assert load_device(dev.root / "device.yaml").channel_name == "stable"
    assert dev.passes(1) == ["nothing"]
    assert dev.trust().serials == {"stable": 1}


def test_metadata_signed_for_another_channel_at_the_followed_url_is_refused(
    dev: PinnedDevice,
) -> None:
    dev.want("latest")
    dev.sign_as("beta")  # a trusted key, the stable URL, but the beta channel's name
    kinds = dev.passes(3)
    assert "stage" not in kinds and "reboot" not in kinds, kinds
    waits = [r for r in dev.records() if r.kind == "decision" and r.action == "wait"]
    assert waits and waits[-1].reason == f"cannot resolve 'latest': channel refused: " \
                                         f"{BETA_REFUSAL}"
    assert [r.reason for r in dev.refusals()] == [BETA_REFUSAL]
    assert "beta" not in dev.trust().serials
    assert dev.reboots == []


def test_a_device_configured_for_beta_takes_beta_and_refuses_stable(
    dev: PinnedDevice,
) -> None:
    dev.follow("beta")
    assert dev.passes(1) == ["nothing"]  # stable metadata: refused, 1.0.0 is still desired
    assert [r.reason for r in dev.refusals()] == [
        "channel metadata: is for channel 'stable', this device follows 'beta'"]
    dev.sign_as("beta")
    dev.passes(1)
    assert dev.trust().serials == {"beta": 2}
    assert dev.reconciler.channel.view(dev.reconciler.spec.policy,  # type: ignore[union-attr]
                                       "r", dev.now).error is None


def test_the_serial_floor_is_kept_per_followed_channel(dev: PinnedDevice) -> None:
    for _ in range(4):
        sign_channel(dev.channel, [dev.root / "keys" / "release.key"])
    dev.passes(1)
    assert dev.trust().serials == {"stable": 5}
    dev.follow("beta")
    dev.sign_as("beta")  # serial 6 in beta: beta's floor is its own, not stable's
    dev.passes(1)
    assert dev.trust().serials == {"stable": 5, "beta": 6}
    old = (dev.channel / "metadata.json").read_bytes()
    dev.sign_as("beta")
    dev.passes(1)
    (dev.channel / "metadata.json").write_bytes(old)  # replay beta's serial 6
    dev.passes(1)
    assert dev.refusals()[-1].reason == ("channel metadata: serial 6 is lower than 7, "
                                         "the last one accepted (metadata rollback)")
    assert dev.trust().serials == {"stable": 5, "beta": 7}


def test_a_refused_file_is_recorded_once_even_when_the_device_is_up_to_date(
    dev: PinnedDevice,
) -> None:
    dev.sign_as("beta")
    assert dev.passes(3) == ["nothing"] * 3  # 1.0.0 wanted and running: nothing to do
    assert len(dev.refusals()) == 1
    dev.restart()
    dev.passes(2)
    assert len(dev.refusals()) == 1, "the same file was recorded again after a restart"
    dev.sign_as("beta")  # another refused file (new serial, new bytes)
    dev.passes(2)
    refusals = dev.refusals()
    assert len(refusals) == 2
    digests = {r.details["metadata_sha256"] for r in refusals}
    assert len(digests) == 2 and digests == set(dev.trust().refused)
    assert dev.reconciler.audit.verify().ok


def test_reading_the_channel_for_status_records_nothing(dev: PinnedDevice) -> None:
    dev.sign_as("beta")
    device = load_device(dev.root / "device.yaml")
    watch = ChannelWatch(device, StateStore(device.data_dir), dev.clock, save_trust=False)
    view = watch.view(dev.reconciler.keeper.refresh()[0].policy,  # type: ignore[union-attr]
                      "r", dev.now)
    assert view.error == f"channel refused: {BETA_REFUSAL}"
    assert dev.refusals() == []
    assert not (dev.root / "data" / TRUST_FILE).exists()


def test_metadata_is_not_believed_while_its_serial_cannot_be_written(dev: PinnedDevice) -> None:
    trust = dev.root / "data" / TRUST_FILE
    # The write fails as on a full disk: its temporary file cannot be created.
    (trust.parent / f".{trust.name}.tmp-{os.getpid()}").mkdir(parents=True)
    watch = dev.reconciler.channel
    policy = dev.reconciler.keeper.refresh()[0].policy  # type: ignore[union-attr]
    assert watch.refresh(policy, dev.now) is None
    view = watch.view(policy, "r", dev.now)
    assert view.error is not None and view.error.startswith(
        f"channel refused: channel trust: cannot write {trust} (")
    assert view.error.endswith("nothing is believed until it can be")
    assert view.latest is None
