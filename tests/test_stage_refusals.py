"""Every refusal of the channel and the installer, end to end through a reconcile pass.

Each test serves the bad thing from a real HTTP server process on 127.0.0.1
(``tests/httpserver.py``), reached through a simulated device's port map, edits
the device's spec to want 1.0.1 and runs ``Reconciler.run_pass``. It asserts
the refusal's precise reason in the audit trail (the ``stage`` outcome, or the
``wait`` decision when the channel is refused before staging), that the other
slot is not marked ``staged`` (boot environment and ``kruxos update status
--json``), that the booted slot is unchanged and that nothing rebooted.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.audit import AuditReader, AuditRecord
from reconciler.config import load_device
from reconciler.errors import ReleaseError
from reconciler.reconcile import PassResult, Reconciler
from reconciler.release.channel import sign_channel
from reconciler.release.identity import read_identity
from reconciler.release.keys import generate_keypair, keyid_of, load_public_key
from reconciler.sim.device import CHANNEL_PORT, IMAGE_SIZE, init_device, publish
from reconciler.store import StateStore
from tests.httpserver import ChannelServer

BLOCK = 1 << 20  # the block size `kruxos release add` uses
KRUXOS = Path(sys.executable).with_name("kruxos")


@dataclass
class SimDevice:
    """A simulated device whose channel is served by a real HTTP server process."""

    root: Path
    server: ChannelServer
    reboots: list[str] = field(default_factory=list)
    _reconciler: Reconciler | None = None

    @property
    def channel(self) -> Path:
        return self.root / "channel"

    @property
    def slot_b(self) -> Path:
        return self.root / "slots" / "sda3"

    @property
    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            self._reconciler = Reconciler(load_device(self.root / "device.yaml"),
                                          rebooter=self.reboots.append)
        return self._reconciler

    def want(self, version: str) -> None:
        spec = self.root / "spec.yaml"
        spec.write_text(re.sub(r"version: \S+", f"version: {version}", spec.read_text(), count=1))

    def run_until(self, kind: str, passes: int = 5) -> PassResult:
        """Passes until one runs an action of ``kind`` (a stage or a wait)."""
        for _ in range(passes):
            result = self.reconciler.run_pass("spec")
            if result.action is not None and result.action.kind == kind:
                return result
        raise AssertionError(f"no {kind} action in {passes} passes")

    def metadata(self) -> dict[str, Any]:
        return dict(json.loads((self.channel / "metadata.json").read_text()))

    def write_metadata(self, doc: dict[str, Any]) -> None:
        (self.channel / "metadata.json").write_text(json.dumps(doc))

    def records(self) -> list[AuditRecord]:
        device = load_device(self.root / "device.yaml")
        return list(AuditReader(StateStore(device.data_dir), device.audit_dir).records())

    def status(self) -> dict[str, Any]:
        out = subprocess.run([str(KRUXOS), "--config", str(self.root / "device.yaml"),
                              "update", "status", "--json"],
                             check=True, capture_output=True, text=True, timeout=60)
        return dict(json.loads(out.stdout))

    def slot_b_digest(self) -> str:
        return hashlib.sha256(self.slot_b.read_bytes()).hexdigest()


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[SimDevice]:
    root = tmp_path / "dev"
    init_device(root)
    (root / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    (root / "run" / "boot_id").write_text("boot-1\n")
    server = ChannelServer(root / "channel")
    try:
        (root / "run" / "ports.json").write_text(
            json.dumps({CHANNEL_PORT: server.url.removeprefix("http://")}))
        yield SimDevice(root, server)
    finally:
        server.stop()


def _outcome_of(records: list[AuditRecord], decision: AuditRecord) -> AuditRecord:
    found = [r for r in records if r.kind == "outcome" and r.decision == decision.seq]
    assert found, f"decision #{decision.seq} has no outcome record"
    return found[-1]


def _assert_not_staged(dev: SimDevice, *, marks: tuple[str, ...]) -> None:
    """Slot B is not staged, per the boot env and per `update status --json`; A still boots."""
    boot = dev.reconciler.backend.read()
    assert boot.marks["B"] in marks and boot.marks["B"] != "staged"
    assert (boot.default, boot.trial, boot.marks["A"]) == ("A", None, "good")
    status = dev.status()
    assert status["booted"] == "A" and status["slots"]["A"]["mark"] == "good"
    assert status["slots"]["B"]["mark"] == boot.marks["B"]
    assert status["boot_status"] == "CONFIRMED"
    assert dev.reboots == []
    assert dev.reconciler.audit.verify().ok


def assert_stage_refused(dev: SimDevice, reason: str, *, marks: tuple[str, ...] = ("bad",)
                         ) -> AuditRecord:
    """The last `stage` decision's outcome is a refusal whose text matches ``reason``."""
    records = dev.records()
    stages = [r for r in records if r.kind == "decision" and r.action == "stage"]
    assert stages, "no stage decision was recorded"
    assert stages[-1].reason.startswith("Stage 1.0.1 into slot B")
    outcome = _outcome_of(records, stages[-1])
    assert outcome.outcome is not None
    assert outcome.outcome.startswith("failed: refused to stage 1.0.1 into slot B: ")
    assert re.search(reason, outcome.outcome), outcome.outcome
    assert re.search(r"slot B is not staged \(marked (bad|empty)\)$", outcome.outcome)
    _assert_not_staged(dev, marks=marks)
    return outcome


def assert_channel_refused(dev: SimDevice, reason: str, before: str) -> AuditRecord:
    """Refused before staging: the `wait` decision names the reason; slot B untouched."""
    records = dev.records()
    waits = [r for r in records if r.kind == "decision" and r.action == "wait"]
    assert waits, "no wait decision was recorded"
    assert waits[-1].reason.startswith("cannot stage 1.0.1: channel refused: ")
    assert re.search(reason, waits[-1].reason), waits[-1].reason
    assert not [r for r in records if r.action == "stage"], "a refused channel was staged from"
    _assert_not_staged(dev, marks=("empty",))
    assert dev.slot_b_digest() == before, "slot B was written"
    assert dev.status()["channel"]["error"].startswith("channel refused: ")
    return waits[-1]


def _keyid(pub: Path) -> str:
    return keyid_of(load_public_key(pub))


# ---- refused before staging: the channel metadata ------------------------------------------

def test_a_bad_signature_is_refused_and_recorded(dev: SimDevice) -> None:
    before = dev.slot_b_digest()
    doc = dev.metadata()
    doc["signed"]["releases"][-1]["changes"].append("a line the key never signed")
    dev.write_metadata(doc)
    dev.want("1.0.1")
    dev.run_until("wait")
    keyid = _keyid(dev.root / "keys" / "release.pub")
    assert_channel_refused(dev, f"no valid signature from a trusted key: bad signature by "
                                f"key {keyid}$", before)


def test_missing_signatures_are_refused_and_recorded(dev: SimDevice) -> None:
    before = dev.slot_b_digest()
    doc = dev.metadata()
    doc["signatures"] = []
    dev.write_metadata(doc)
    dev.want("1.0.1")
    dev.run_until("wait")
    assert_channel_refused(dev, r"missing signature \(the metadata is not signed\)$", before)


def test_metadata_signed_by_an_unknown_key_is_refused_and_recorded(
    dev: SimDevice, tmp_path: Path,
) -> None:
    before = dev.slot_b_digest()
    key, pub = generate_keypair(tmp_path / "stranger", "stranger")
    sign_channel(dev.channel, [key])
    dev.want("1.0.1")
    dev.run_until("wait")
    assert_channel_refused(dev, f"key {_keyid(pub)} is unknown \\(not among the trusted "
                                "keys\\)$", before)


def test_metadata_signed_by_a_revoked_key_is_refused_even_though_trusted(
    dev: SimDevice,
) -> None:
    before = dev.slot_b_digest()
    config = dev.root / "device.yaml"
    config.write_text(config.read_text() + "revokedKeys: [keys/release.pub]\n")
    dev.want("1.0.1")
    dev.run_until("wait")
    keyid = _keyid(dev.root / "keys" / "release.pub")
    assert_channel_refused(dev, f"key {keyid} is revoked$", before)


def test_expired_metadata_is_refused_as_a_freeze_and_recorded(dev: SimDevice) -> None:
    before = dev.slot_b_digest()
    signed_at = datetime.now(UTC) - timedelta(days=3)
    sign_channel(dev.channel, [dev.root / "keys" / "release.key"],
                 expires_in=timedelta(days=1), now=signed_at)
    expired = (signed_at + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    dev.want("1.0.1")
    dev.run_until("wait")
    assert_channel_refused(dev, f"expired at {expired} \\(now ", before)


def test_metadata_with_a_lower_serial_than_seen_is_refused_as_a_rollback(
    dev: SimDevice,
) -> None:
    before = dev.slot_b_digest()
    old = dev.metadata()
    sign_channel(dev.channel, [dev.root / "keys" / "release.key"])
    assert dev.reconciler.run_pass("spec").action is not None  # sees serial 2, keeps it
    dev.write_metadata(old)  # validly signed, unexpired, serial 1: a replay
    dev.want("1.0.1")
    dev.run_until("wait")
    assert_channel_refused(dev, r"serial 1 is lower than 2, the last one accepted "
                                r"\(metadata rollback\)$", before)


def test_a_lower_version_than_the_running_one_is_blocked_without_allow_downgrade(
    dev: SimDevice,
) -> None:
    publish(dev.root, "0.9.0")
    before = dev.slot_b_digest()
    dev.want("0.9.0")
    dev.run_until("blocked")
    blocked = [r for r in dev.records() if r.kind == "decision" and r.action == "blocked"]
    assert blocked[-1].reason == ("0.9.0 is lower than the running 1.0.0; set allowDowngrade: "
                                  "true to go back")
    assert not [r for r in dev.records() if r.action == "stage"]
    _assert_not_staged(dev, marks=("empty",))
    assert dev.slot_b_digest() == before


# ---- refused while staging: the image ------------------------------------------------------

def test_a_tampered_block_is_refused_and_never_written(dev: SimDevice) -> None:
    dev.server.set_faults(tamper_at=2 * BLOCK + 777)
    dev.want("1.0.1")
    dev.run_until("stage")
    assert_stage_refused(dev, r"kruxos-1\.0\.1\.img: block 2 \(bytes 2097152-3145727\) hash "
                              r"mismatch: .*the block was not written")
    with open(dev.slot_b, "rb") as f:
        f.seek(2 * BLOCK)
        assert f.read(BLOCK) == bytes(BLOCK), "the tampered block reached the slot"


def test_endless_data_is_read_to_the_declared_size_and_refused(dev: SimDevice) -> None:
    dev.server.set_faults(endless=True)
    dev.want("1.0.1")
    result = dev.run_until("stage")
    assert result.outcome is not None and result.outcome.duration_s < 10
    assert_stage_refused(dev, r"image longer than its declared size 3145728; stopped reading "
                              "at the declared length")
    (image_request,) = [r for r in dev.server.requests() if r["path"].endswith(".img")]
    assert image_request["fault"] == "endless"


def test_an_image_longer_than_declared_is_refused_before_any_byte_is_written(
    dev: SimDevice,
) -> None:
    before = dev.slot_b_digest()
    dev.server.set_faults(extra=4096)
    dev.want("1.0.1")
    dev.run_until("stage")
    assert_stage_refused(dev, r"image longer than its declared size: the server sends "
                              r"3149824 bytes from offset 0, the signed size 3145728 leaves "
                              "3145728; nothing of it was written")
    assert dev.slot_b_digest() == before


def test_an_image_larger_than_the_slot_is_refused_before_the_slot_is_touched(
    dev: SimDevice,
) -> None:
    with open(dev.slot_b, "r+b") as f:
        f.truncate(IMAGE_SIZE // 2)
    dev.want("1.0.1")
    dev.run_until("stage")
    assert_stage_refused(dev, rf"image kruxos-1\.0\.1\.img is {IMAGE_SIZE} bytes, slot "
                              rf"\S+sda3 holds only {IMAGE_SIZE // 2 - 4096} \(its "
                              rf"{IMAGE_SIZE // 2} bytes less the 4096-byte slot identity\); "
                              "nothing was written",
                         marks=("empty",))
    assert dev.slot_b.read_bytes() == bytes(IMAGE_SIZE // 2)
    assert not [r for r in dev.server.requests() if r["path"].endswith(".img")]


def test_signed_metadata_whose_whole_hash_contradicts_its_blocks_fails_the_read_back(
    dev: SimDevice,
) -> None:
    # Every served byte matches its signed block hash, so the only way to reach the
    # whole-image check honestly is metadata that contradicts itself: a publisher
    # that signed a wrong `sha256` with the device's trusted key.
    draft_path = dev.channel / "draft.json"
    draft = json.loads(draft_path.read_text())
    release = next(r for r in draft["releases"] if r["version"] == "1.0.1")
    release["sha256"] = hashlib.sha256(b"not this image").hexdigest()
    draft_path.write_text(json.dumps(draft))
    sign_channel(dev.channel, [dev.root / "keys" / "release.key"])
    dev.want("1.0.1")
    dev.run_until("stage")
    outcome = assert_stage_refused(dev, r"read-back of \S+sda3: whole-image hash mismatch "
                                        r"\(got [0-9a-f]{16}…, signed [0-9a-f]{16}…\)")
    assert outcome.outcome is not None
    assert not (dev.root / "data" / "staging.resume.json").exists()
    assert read_identity(dev.slot_b) == (None, None), "a refused image is claimed by no slot"


def test_a_staged_slot_names_the_release_as_the_channel_signed_it(dev: SimDevice) -> None:
    dev.want("1.0.1")
    result = dev.run_until("stage")
    assert result.outcome is not None and result.outcome.ok, result
    signed = dev.metadata()["signed"]
    entry = next(r for r in signed["releases"] if r["version"] == "1.0.1")
    identity = read_identity(dev.slot_b)[0]
    assert identity is not None
    assert (identity.version, identity.size, identity.sha256, identity.channel,
            identity.serial) == ("1.0.1", entry["size"], entry["sha256"], "stable",
                                 signed["serial"])
    assert dev.reconciler.backend.read().marks["B"] == "staged"
    assert not (dev.root / "data" / "staging.resume.json").exists(), \
        "the resume point goes once the slot is marked staged"
    verified = subprocess.run([str(KRUXOS), "--config", str(dev.root / "device.yaml"),
                               "slot", "verify"], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr
    lines = verified.stdout.splitlines()
    assert lines[0].startswith("slot A (sda2): verified: ") and "1.0.0" in lines[0]
    assert lines[1].startswith("slot B (sda3): verified: ") and "1.0.1" in lines[1]
    assert f"[channel stable, serial {signed['serial']}, written " in lines[1]
    with open(dev.slot_b, "r+b") as f:  # one changed byte of the image
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    changed = subprocess.run([str(KRUXOS), "--config", str(dev.root / "device.yaml"),
                              "slot", "verify", "B"], capture_output=True, text=True, timeout=60)
    assert changed.returncode == 1
    assert changed.stdout.startswith("slot B (sda3): MISMATCH: ")
    assert f"the first {entry['size']} bytes do not match 1.0.1" in changed.stdout


# ---- the booted slot is never a target -----------------------------------------------------

def test_the_stager_refuses_the_booted_slot_it_is_asked_to_write(dev: SimDevice) -> None:
    """`decide` never targets the booted slot; a direct caller (the CLI) still cannot."""
    booted = (dev.root / "slots" / "sda2").read_bytes()
    reconciler = dev.reconciler
    dev.want("1.0.1")
    policy = reconciler.keeper.refresh()[0]
    assert policy is not None
    with pytest.raises(ReleaseError, match=r"refused to stage 1\.0\.1 into slot A: refusing "
                                           r"to write \S+sda2: it is the booted slot .*"
                                           r"slot A is not staged \(marked good\)$"):
        reconciler.executor.stager.stage("1.0.1", "A", policy.policy, lambda: False,
                                         lambda done, total: None)
    assert (dev.root / "slots" / "sda2").read_bytes() == booted
    assert not [r for r in dev.server.requests() if r["path"].endswith(".img")]
    _assert_not_staged(dev, marks=("empty",))

