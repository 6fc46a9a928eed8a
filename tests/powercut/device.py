"""A simulated device on the power-cut filesystem: update it, cut the power, boot what is left.

:class:`CutDevice` moves a ``kruxos sim init`` device's data dir, slots and
boot env onto a power-cut filesystem (the device dir keeps symlinks to them,
so the config and every tool see the usual layout). :meth:`CutDevice.update_and_cut`
asks for a new version and arms a cut at the seeded N-th changing operation;
:meth:`CutDevice.power_cut` ends every process of the device, writes the durable
tree, mounts a fresh filesystem over it (so the next cut can come during the
recovery), and :meth:`CutDevice.check_at_rest` checks, before anything runs,
the invariants a cut must never break. :meth:`CutDevice.recover` boots the
device and waits until it converges with a verified audit trail.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.config import load_device
from tests.device import SimDevice
from tests.invariants import check_boot, check_resume, check_state, version_in
from tests.powercut.mount import PowercutMount
from tests.waiting import wait_for

#: What the power-cut filesystem carries: everything a power cut can hit.
ON_DISK = ("data", "slots", "boot")
#: What a power cut wipes from ``run/`` (a tmpfs on a real device).
RUN_FILES = ("sim.pid", "ports.json", "os.ready", "cmdline", "boot_id")


@dataclass
class Cut:
    """One power cut: where it fell and what the invariants found."""

    seed: int
    after: int  # the changing operation the cut was armed at
    ops: int  # changing operations done before the power went
    at_rest: bool = False  # the update finished first: the cut came after it
    where: str = "changing operation"
    last_writes: list[dict[str, Any]] = field(default_factory=list)
    torn_audit: bool = False
    phase: str = ""  # the last decision durable in the audit trail when the power went
    booted: str = ""
    violations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = "at rest" if self.at_rest else f"at {self.where} {self.after}"
        return (f"seed {self.seed}: cut {where} ({self.ops} done) after {self.phase}; last writes "
                f"{[(w['path'], w['fate'], w['kept']) for w in self.last_writes]}")


class CutDevice:
    """One simulated device whose data, slots and boot env are on a power-cut filesystem."""

    def __init__(self, device: SimDevice, powercut: Callable[..., PowercutMount],
                 work: Path) -> None:
        self.device, self.powercut, self.work = device, powercut, work
        self.backing, self.mnt = work / "disk", work / "mnt"
        self.backing.mkdir(parents=True)
        for sub in ON_DISK:
            shutil.move(device.dir / sub, self.backing / sub)
            os.symlink(self.mnt / sub, device.dir / sub)
        config = load_device(device.config)
        self.backend_name = config.bootloader
        self.env_path = config.boot_env
        self.slot_paths = dict(config.slot_paths)
        self.mounts = 0
        self.fs = self._mount()
        self.next_patch = 2  # sim init publishes 1.0.0 and 1.0.1
        self.tail_cuts = 0

    def _mount(self) -> PowercutMount:
        self.mounts += 1
        return self.powercut(self.backing, self.mnt, self.work / f"fs-{self.mounts}")

    # ---- an update and its cut --------------------------------------------------------------

    def boot(self) -> None:
        """Start the device and wait for its first pass (the audit head)."""
        self.device.start()
        self.device.wait_for(lambda: (self.device.dir / "data" / "audit" / "head.json").exists(),
                             60, "the first pass of the daemon")

    def new_version(self) -> str:
        version = f"1.0.{self.next_patch}"
        self.next_patch += 1
        self.device.publish(version)
        return version

    def update(self, version: str) -> int:
        """Update to ``version`` without a cut; return how many changing operations it took."""
        before = self.fs.status()["ops"]
        self.device.edit_spec(version=version)
        self.device.wait_status(version, "CONFIRMED", timeout=90)
        ops: int = self.fs.status()["ops"] - before
        return ops

    def update_and_cut(self, version: str, seed: int, span: int,
                       audit_records: int = 0) -> Cut:
        """Ask for ``version`` and cut at a seeded operation among the next ``span``, or
        with ``audit_records``, right after the write of a seeded one of the next that
        many audit records (before its fsync: the record may be torn).

        An update that finishes before that operation is cut at rest once it is
        confirmed (a cut that found nothing in flight)."""
        rng = random.Random(f"powercut/{seed}")
        if audit_records:
            after = rng.randint(1, audit_records)
            self.fs.arm(after, writes_under="/data/audit/audit-")
        else:
            after = rng.randint(1, span)
            self.fs.arm(after)
        self.device.edit_spec(version=version)

        def cut_or_done() -> bool:
            if self.fs.status()["frozen"]:
                return True
            return self._confirmed(version)
        def gone_without_a_cut() -> str | None:
            # Processes of the device die of the cut's EIO (sim run too, when the cut
            # meets a reboot): that is the cut, not a device that stopped before it.
            proc = self.device.proc
            if proc is not None and proc.poll() is not None and not self.fs.status()["frozen"]:
                return f"sim run exited ({proc.returncode}) before the cut"
            return None
        wait_for(cut_or_done, 120, f"the cut at operation {after} (seed {seed})", every=0.2,
                 context=self.device.diagnostics, abort=gone_without_a_cut)
        status = self.fs.status()
        at_rest = not status["frozen"]
        if at_rest:
            self.fs.cut()
        where = "the write of audit record" if audit_records else "changing operation"
        return Cut(seed, after, status["ops"], at_rest, where=where)

    def _confirmed(self, version: str) -> bool:
        doc = self.device.status_json()
        return bool(doc["slots"][doc["booted"]]["version"] == version
                    and doc["boot_status"] == "CONFIRMED")

    # ---- the cut ----------------------------------------------------------------------------

    def power_cut(self, cut: Cut) -> None:
        """End every process of the device; the durable tree becomes the disk, remounted."""
        self.device.kill_leftovers()
        self.device.wait_for(lambda: not self.device.processes(), 30,
                             "every process of the device to end")
        tree = self.work / "after-cut"
        report = self.fs.materialize(tree, cut.seed)
        assert self.fs.status()["errors"] == [], self.fs.status()["errors"]
        cut.last_writes = report["last_writes"]
        self.fs.stop()
        shutil.rmtree(self.backing)
        shutil.rmtree(self.fs.work / "shadow")
        tree.rename(self.backing)
        for name in RUN_FILES:
            (self.device.dir / "run" / name).unlink(missing_ok=True)
        self.fs = self._mount()

    # ---- the invariants -----------------------------------------------------------------------

    def check_at_rest(self, cut: Cut) -> None:
        """What must hold of the durable tree before anything runs on it."""
        cut.violations += self._check_boot(cut)
        cut.violations += self._check_state()
        cut.violations += self._check_resume()
        cut.torn_audit = self._audit_tail_torn()
        self.tail_cuts = self._tail_cut_events()
        decisions = [r["action"] for r in self.device.audit_file_records()
                     if r.get("kind") == "decision"]
        cut.phase = decisions[-1] if decisions else "no decision"
        verify = self.device.cli("audit", "verify", check=False)
        if verify.returncode != 0 and not cut.torn_audit:
            cut.violations.append(f"audit verify after the cut: {verify.stdout}{verify.stderr}")

    def _check_boot(self, cut: Cut) -> list[str]:
        """The slot the bootloader will pick holds a complete image, marked good or on trial."""
        cut.booted, problems = check_boot(self.device)
        return [f"after the cut: {problem}" for problem in problems]

    def version_in(self, slot: str) -> str | None:
        """The release the slot's identity names, if the slot holds that whole image."""
        return version_in(self.device, slot)

    def _check_state(self) -> list[str]:
        return [f"after the cut: {problem}" for problem in check_state(self.device)]

    def _check_resume(self) -> list[str]:
        return check_resume(self.device)

    def _tail_cut_events(self) -> int:
        return sum(r.get("action") == "audit-tail-cut" for r in self.device.audit_file_records())

    def _audit_tail_torn(self) -> bool:
        files = sorted((self.device.dir / "data" / "audit").glob("audit-*.jsonl"))
        return bool(files) and not files[-1].read_bytes().endswith(b"\n") \
            and files[-1].stat().st_size > 0

    def recover(self, version: str, cut: Cut) -> None:
        """Boot what the cut left; it must boot the slot predicted and converge on ``version``."""
        boots = len(self.device.boots())
        self.device.start()
        first = self.device.boots()[boots]
        if cut.booted and f"chose slot {cut.booted}" not in first:
            cut.violations.append(f"predicted slot {cut.booted}, the bootloader says: {first}")
        self.device.wait_status(version, "CONFIRMED", timeout=120)
        verify = self.device.cli("audit", "verify", check=False)
        if verify.returncode != 0:
            cut.violations.append(f"audit verify after recovery: {verify.stdout}{verify.stderr}")
        recorded = self._tail_cut_events() - self.tail_cuts
        if recorded != int(cut.torn_audit):
            cut.violations.append(f"the cut left {'a' if cut.torn_audit else 'no'} torn audit "
                                  f"record; the recovery recorded {recorded} audit-tail-cut")
