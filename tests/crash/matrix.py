"""The crash matrix: a simulated device's daemon killed at a failpoint, on a flow, and what
the device comes back to.

A run (:func:`crash`) takes one point, one flow and one bootloader:

1. ``kruxos sim init`` a device of that bootloader; the flow's *set-up* brings it to
   where the flow starts, unarmed (publishing, a first update, a request in the
   inbox), and leaves it stopped;
2. ``kruxos sim run`` starts with ``KRUXOS_FAILPOINTS=POINT=kill@N``; the flow's
   steps run (a request made once the device reaches a state) until the daemon is
   killed at the point: the supervisor then halts the device as the crash left it
   (``reconciler/sim/run.py``). A flow that ends without passing the point fails
   the run: the matrix says the point lies on the flow;
3. at rest, the invariants of ``tests/invariants.py`` are checked: the bootloader
   picks a slot holding a complete image, marked good or on trial; a state file
   parses; the resume point names blocks that are in the slot; ``audit verify``
   passes;
4. the device powers on again, unarmed: the bootloader must boot the slot
   predicted, every boot must come up, the rest of the flow's steps run, and the
   device must reach the flow's end state (version booted, boot status, marks,
   pin). Then: ``audit verify`` passes; no decision has two outcomes (no action
   ran twice under one decision); the device booted no more often than the reboots
   decided, plus the crash's; and the image bytes served after the crash start at
   the resume point left durable at the crash, or later (no verified block that
   the resume point names is fetched again).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reconciler.cli.status import status_json
from reconciler.config import load_device
from reconciler.inbox import submit
from reconciler.inspect import inspect_device
from reconciler.sim.run import HALTED_AT_FAILPOINT
from tests.device import KRUXOS, REPO, SimDevice
from tests.invariants import check_audit, check_boot, check_resume, check_state

BACKENDS = ("grub", "uboot", "bls")
#: The release a flow updates to: 20 blocks of 1 MiB, so resume points (every 4 MiB, or
#: every second on a slow link) fall inside it.
TARGET = "1.0.2"
TARGET_MB = 20
#: The block the block points kill at: after the resume point of block 16.
LATE_BLOCK = 18

# ---- the flows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Once ``ready`` holds, do ``act`` (at most once per run)."""

    what: str
    ready: Callable[[SimDevice], bool]
    act: Callable[[SimDevice], None]


@dataclass(frozen=True)
class Flow:
    """One way through the product: set up unarmed, steps, the end state to reach."""

    name: str
    setup: Callable[[SimDevice], None]
    steps: tuple[Step, ...]
    end: Callable[[SimDevice], bool]
    end_what: str


def _short_trials(dev: SimDevice) -> None:
    dev.spec.write_text(dev.spec.read_text().replace("timeout: 8s", "timeout: 3s"))


def _publish_target(dev: SimDevice, behaviour: str = "healthy") -> None:
    dev.cli("sim", "publish", str(dev.dir), TARGET, "--behaviour", behaviour,
            "--size-mb", str(TARGET_MB))


def _status(dev: SimDevice) -> dict[str, Any]:
    """What ``kruxos update status --json`` says, read in this process (the flows poll it
    often: a command per poll would take a core from the device)."""
    now = datetime.now(UTC)
    try:
        view = inspect_device(load_device(dev.config), now)
    except Exception:  # noqa: BLE001 - a device between two writes: look again
        return {}
    return status_json(view.observed, view.boot_raw, view.policy, view.action, now)


def _running(dev: SimDevice, version: str, boot_status: str, pin: str | None,
             slot: str, marks: dict[str, str]) -> bool:
    doc = _status(dev)
    if not doc:
        return False
    booted = doc["booted"]
    override = (doc.get("override") or {}).get("version")
    return bool(booted == slot and doc["slots"][booted]["version"] == version
                and doc["boot_status"] == boot_status and override == pin
                and all(doc["slots"][s]["mark"] == m for s, m in marks.items()))


def _request(kind: str, **fields: Any) -> Callable[[SimDevice], None]:
    """Drop a person's request into the inbox and wake the daemon (as the CLI does)."""
    def act(dev: SimDevice) -> None:
        submit(dev.dir / "data", kind, **fields)
        pid = dev.daemon_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
    return act


def _setup_confirmed(dev: SimDevice) -> None:
    _short_trials(dev)
    _publish_target(dev)
    dev.edit_spec(version=TARGET)


def _setup_rolled_back(dev: SimDevice) -> None:
    _short_trials(dev)
    _publish_target(dev, "gateway-fails")
    dev.edit_spec(version=TARGET)


def _setup_manual_rollback(dev: SimDevice) -> None:
    """1.0.1 confirmed on B (an update without a crash), then a rollback asked for."""
    _short_trials(dev)
    dev.edit_spec(version="1.0.1")
    dev.start()
    dev.wait_status("1.0.1", "CONFIRMED", timeout=90)
    dev.stop()
    submit(dev.dir / "data", "rollback")


def _setup_cancel(dev: SimDevice) -> None:
    """A staging of the target stopped halfway (the device shut down), then a cancel."""
    _short_trials(dev)
    _publish_target(dev)
    dev.edit_spec(version=TARGET)
    dev.start("--channel-rate", "2000")

    def halfway() -> bool:
        staging = dev.state().get("staging") or {} if (dev.dir / "data" / "state.json").exists() \
            else {}
        return bool(staging.get("version") == TARGET and int(staging.get("done", 0)) >= 2 << 20)
    dev.wait_for(halfway, 90, "the staging to be under way", every=0.05)
    dev.stop()
    submit(dev.dir / "data", "cancel")


def _setup_pin(dev: SimDevice) -> None:
    """A pin of the target asked for at the device (``kruxos update apply --yes``)."""
    _short_trials(dev)
    _publish_target(dev)
    submit(dev.dir / "data", "pin", version=TARGET, reboot="now")


#: The service flows' release: 1.0.0's root image with a new gateway that keeps its data.
SERVICE_TARGET = "1.0.2"


def _setup_service(behaviour: str) -> Callable[[SimDevice], None]:
    """A service-only release on the booted 1.0.0's root image, asked for by the spec: a
    service update from the first pass, no slot update first."""
    def setup(dev: SimDevice) -> None:
        _short_trials(dev)
        dev.cli("sim", "publish", str(dev.dir), SERVICE_TARGET, "--service", "gateway",
                "--base", "1.0.0", "--data-dir", "gateway", "--behaviour", behaviour)
        dev.edit_spec(version=SERVICE_TARGET)
    return setup


def _service_end(dev: SimDevice, confirmed: bool) -> bool:
    """The service update finished one way, never both, its record committed, the gateway's
    data what that way leaves (migrated by 1.0.2, or put back: empty as before)."""
    doc = _status(dev)
    if not doc or doc.get("service_update") is not None or doc["booted"] != "A" \
            or doc["boot_status"] != "CONFIRMED":
        return False
    failed = (doc.get("failed") or {}).get("version")
    if confirmed != (doc.get("service_release") == SERVICE_TARGET) or \
            (failed == SERVICE_TARGET) == confirmed:
        return False
    other = "restore-services" if confirmed else "confirm-services"
    if dev.decisions(other):
        raise AssertionError(f"the service update was both confirmed and restored: {other}")
    records = list((dev.dir / "services" / "roots").glob("*/gateway/record.json"))
    if len(records) != 1 or json.loads(records[0].read_text())["uncommitted"]:
        return False
    schema = dev.dir / "service-data" / "gateway" / "schema"
    return schema.exists() == confirmed and (not confirmed
                                             or schema.read_text() == f"{SERVICE_TARGET}\n")


FLOWS: dict[str, Flow] = {flow.name: flow for flow in (
    Flow("confirmed", _setup_confirmed, (),
         lambda d: _running(d, TARGET, "CONFIRMED", None, "B", {"A": "good", "B": "good"}),
         f"{TARGET} confirmed on B, A still good"),
    Flow("rolled-back", _setup_rolled_back, (),
         lambda d: _running(d, "1.0.0", f"CONFIRMED (rolled back from {TARGET})", None, "A",
                            {"A": "good", "B": "bad"}),
         f"1.0.0 on A again, rolled back from {TARGET}, B bad"),
    Flow("manual-rollback", _setup_manual_rollback, (),
         lambda d: _running(d, "1.0.0", "CONFIRMED (rolled back from 1.0.1)", None, "A",
                            {"A": "good"}),
         "1.0.0 on A again, rolled back from 1.0.1 by request"),
    Flow("cancel", _setup_cancel, (),
         lambda d: _running(d, "1.0.0", "CONFIRMED", "1.0.0", "A", {"A": "good"})
         and (d.state().get("staging") is None)
         and not (d.dir / "data" / "staging.resume.json").exists(),
         "1.0.0 pinned, no staging, no resume point"),
    Flow("pin-resume", _setup_pin,
         (Step(f"{TARGET} confirmed under the pin",
               lambda d: _running(d, TARGET, "CONFIRMED", TARGET, "B", {"B": "good"}),
               _request("resume")),),
         lambda d: _running(d, TARGET, "CONFIRMED", None, "B", {"B": "good"}),
         f"the pin dropped, {TARGET} kept (the spec's 1.0.0 is older: blocked)"),
    Flow("service-confirmed", _setup_service("healthy"), (),
         lambda d: _service_end(d, confirmed=True),
         f"the service update to {SERVICE_TARGET} confirmed on 1.0.0's slot A, no reboot, "
         "its data migrated"),
    Flow("service-restored", _setup_service("gateway-fails"), (),
         lambda d: _service_end(d, confirmed=False),
         f"the service update to {SERVICE_TARGET} restored and blocked, the gateway's data "
         "put back"),
)}

# ---- one crash ------------------------------------------------------------------------------


@dataclass
class Crash:
    """One run of the matrix: where the kill fell and what the checks found."""

    point: str
    hit: int
    flow: str
    backend: str
    killed: bool = False
    booted_after: str = ""
    resume_at_rest: int = 0
    refetched: int = 0
    #: The kill comes after the last block was written: nothing may be fetched again.
    downloaded: bool = False
    violations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"{self.backend}/{self.flow}: {self.point}=kill@{self.hit}: "
                f"{'killed' if self.killed else 'NOT HIT'}; slot {self.booted_after} booted "
                f"next; {self.refetched} image bytes fetched after the crash (resume point "
                f"at byte {self.resume_at_rest})")


class CrashRig:
    """Drives one device through one flow with one failpoint armed."""

    def __init__(self, dev: SimDevice, flow: Flow, crash: Crash) -> None:
        self.dev, self.flow, self.crash = dev, flow, crash
        self.done: set[int] = set()

    def run(self, timeout: float = 120) -> Crash:
        self.flow.setup(self.dev)
        served_before = len(self._served())
        self._start_armed()
        self.crash.killed = self._steps_until(lambda: self._halted(), timeout)
        if not self.crash.killed:
            self.crash.violations.append(f"the flow ended without passing {self.crash.point}")
            return self.crash
        self._at_rest()
        served_at_crash = len(self._served())
        boots = len(self.dev.boots())
        self.dev.start()
        self._check_boots(boots)
        self._steps_until(lambda: self.flow.end(self.dev), timeout, what=self.flow.end_what)
        self._after(served_before, served_at_crash)
        return self.crash

    # ---- phases ---------------------------------------------------------------------------

    def _start_armed(self) -> None:
        dev = self.dev
        env = dict(dev.env, KRUXOS_FAILPOINTS=f"{self.crash.point}=kill@{self.crash.hit}")
        with open(dev.console, "ab") as out:
            dev.proc = subprocess.Popen([*KRUXOS, "sim", "run", str(dev.dir)], cwd=REPO,
                                        env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def _halted(self) -> bool:
        proc = self.dev.proc
        if proc is None or proc.poll() is None:
            return False
        self.dev.proc = None
        if proc.returncode != HALTED_AT_FAILPOINT:
            raise AssertionError(f"sim run exited {proc.returncode}, not halted at the "
                                 f"failpoint{self.dev.diagnostics()}")
        return True

    def _steps_until(self, stop: Callable[[], bool], timeout: float,
                     what: str = "the kill") -> bool:
        """Run the flow's steps as they become ready until ``stop``; ``False`` if the flow
        reached its end first (only while waiting for the kill)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stop():
                return True
            for index, step in enumerate(self.flow.steps):
                if index not in self.done and step.ready(self.dev):
                    step.act(self.dev)
                    self.done.add(index)
                    break
            else:
                if what == "the kill" and len(self.done) == len(self.flow.steps) \
                        and self.flow.end(self.dev):
                    return self._halts_soon()
            time.sleep(0.2)
        raise AssertionError(f"{self.crash.describe()}: timed out after {timeout:g}s waiting "
                             f"for {what}{self.dev.diagnostics()}")

    def _halts_soon(self, grace: float = 10.0) -> bool:
        """The flow's end is visible: a point just after it (the confirm's mark makes the
        slot good before the state is cleared) still fires within moments, or never."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self._halted():
                return True
            time.sleep(0.1)
        return False

    def _at_rest(self) -> None:
        dev, crash = self.dev, self.crash
        dev.wait_for(lambda: not dev.processes(), 30, "every process of the device to end")
        crash.booted_after, problems = check_boot(dev)
        crash.violations += [f"at rest: {p}" for p in problems]
        crash.violations += [f"at rest: {p}" for p in check_state(dev) + check_resume(dev)]
        crash.violations += [f"at rest: {p}" for p in check_audit(dev)]
        crash.resume_at_rest = _resume_byte(dev)
        for name in ("ports.json", "os.ready"):
            (dev.dir / "run" / name).unlink(missing_ok=True)

    def _check_boots(self, before: int) -> None:
        first = self.dev.boots()[before]
        if f"chose slot {self.crash.booted_after} " not in first:
            self.crash.violations.append(
                f"predicted slot {self.crash.booted_after}, the bootloader says: {first}")

    def _after(self, served_before: int, served_at_crash: int) -> None:
        dev, crash = self.dev, self.crash
        crash.violations += check_audit(dev)
        console = dev.console_text()
        for bad in ("did not boot", "does not mount", "hangs at boot"):
            if bad in console:
                crash.violations.append(f"a boot failed: {bad!r} on the console")
        records = dev.audit_file_records()
        crash.violations += _twice(records)
        crash.violations += _boots(records, dev.boots())
        crash.violations += self._refetch(served_before, served_at_crash)

    def _refetch(self, served_before: int, served_at_crash: int) -> list[str]:
        """Image bytes fetched after the crash start at the durable resume point or later."""
        served = self._served()
        image = f"/kruxos-{TARGET}.img"
        after = [r for r in served[served_at_crash:] if r["path"] == image]
        self.crash.refetched = sum(r["bytes"] for r in after)
        early = [r for r in after if r["start"] < self.crash.resume_at_rest]
        if self.crash.downloaded and after:
            return [f"{self.crash.refetched} image bytes fetched again from byte "
                    f"{after[0]['start']}, though every block was written and verified "
                    "before the crash"]
        if early:
            return [f"image bytes fetched again from byte {early[0]['start']}, before the "
                    f"resume point at byte {self.crash.resume_at_rest}"]
        return []

    def _served(self) -> list[dict[str, Any]]:
        path = self.dev.dir / "run" / "served.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _resume_byte(dev: SimDevice) -> int:
    """The byte a staging of the target resumes at, as the files say at rest."""
    try:
        resume = json.loads((dev.dir / "data" / "staging.resume.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return 0
    if resume.get("version") != TARGET:
        return 0
    return int(resume["next_block"]) * int(resume["block_size"])


def _twice(records: list[dict[str, Any]]) -> list[str]:
    """No decision has two outcomes: an action runs once per decision."""
    seen: dict[int, int] = {}
    for record in records:
        if record["kind"] == "outcome":
            seen[record["decision"]] = seen.get(record["decision"], 0) + 1
    return [f"decision #{seq} has {n} outcomes" for seq, n in seen.items() if n > 1]


#: Decisions whose action reboots the device (``reboot``: a trial armed and rebooted into).
REBOOTING = ("reboot", "rollback")


def _boots(records: list[dict[str, Any]], boots: list[str]) -> list[str]:
    """A boot is a power-on (``sim run`` started: its boot #1) or a decided reboot."""
    decided = [r for r in records if r["kind"] == "decision" and r["action"] in REBOOTING]
    power_ons = sum("] boot #1:" in line for line in boots)
    if len(boots) > power_ons + len(decided):
        return [f"{len(boots)} boots for {power_ons} power-ons and {len(decided)} rebooting "
                "decisions"]
    return []


# ---- the points -----------------------------------------------------------------------------

ALL_FLOWS = ("confirmed", "rolled-back", "manual-rollback", "cancel", "pin-resume")
STAGING = ("confirmed", "rolled-back", "pin-resume")
SERVICES = ("service-confirmed", "service-restored")
#: The service points ``make test`` runs (on their first flow): the switch read back from
#: the store, a record renamed before its link (what a restart must not start from), the
#: data put back after the migrated dir was moved aside.
SERVICE_SLICE = ("services.switched", "service-record.renamed", "service-data.moved-aside")


@dataclass(frozen=True)
class Point:
    """A failpoint, the flows it lies on, the backends it is in, and which pass kills."""

    name: str
    flows: tuple[str, ...]
    safe: str
    backends: tuple[str, ...] = BACKENDS
    hit: int = 1
    boot_env: bool = False  # on the way of a boot env write: run on every backend in the slice
    downloaded: bool = False  # after the last block: a kill there costs no download
    in_slice: bool = True  # in ``make test``'s slice (on its first flow); else torture only


POINTS: tuple[Point, ...] = (
    Point("decided.stage", STAGING, "the decision is durable, the stage not begun: the next "
          "pass decides it again from what is on disk"),
    Point("decided.reboot", STAGING, "the slot is staged, nothing armed: the next pass arms "
          "again"),
    Point("decided.probe", STAGING, "a probe is only a question: the next pass asks again"),
    Point("decided.confirm", ("confirmed", "pin-resume"), "the trial is still armed and "
          "healthy: the next pass confirms"),
    Point("decided.rollback", ("rolled-back", "manual-rollback"), "the failure is not yet "
          "kept: the next pass judges the trial again (the bootloader counts tries meanwhile)"),
    Point("decided.rollback-request", ("manual-rollback",), "the request stays in the inbox "
          "until its state is written: it is taken again"),
    Point("decided.cancel", ("cancel",), "as any request: taken again from the inbox"),
    Point("decided.pin", ("pin-resume",), "as any request: taken again from the inbox"),
    Point("decided.resume", ("pin-resume",), "as any request: taken again from the inbox"),
    Point("audit.appended", ALL_FLOWS, "a kill keeps the written record whole; the head is "
          "moved past it when the trail opens"),
    Point("audit-head.temp-written", ALL_FLOWS, "the head is behind the trail by one record; "
          "the trail's last record is the truth, the temp file is swept"),
    Point("audit-head.renamed", ALL_FLOWS, "the rename is done (a kill loses no page cache)"),
    Point("state.temp-written", ALL_FLOWS, "state.json is the old whole document; the step "
          "is decided again from it; the temp file is swept when the lock is taken"),
    Point("state.renamed", ALL_FLOWS, "state.json is new, its copy old: the store reads "
          "state.json and rewrites both at the next write"),
    Point("state-copy.temp-written", ALL_FLOWS, "both documents whole (new and old)"),
    Point("state-copy.renamed", ALL_FLOWS, "both documents new"),
    Point("install.invalidated", STAGING, "the slot claims no release (identity destroyed "
          "first): it is neither booted nor trusted until restaged"),
    Point("install.block-fetched", STAGING, "the verified block was not written; the "
          "resume point names only blocks written and fdatasynced before it", hit=LATE_BLOCK),
    Point("install.block-written", STAGING, "the resume point (every 4 MiB) is behind the "
          "written blocks: they are fetched again, none before it", hit=LATE_BLOCK),
    Point("install.synced", STAGING, "blocks durable, resume point old: a refetch from the "
          "old point"),
    Point("resume.temp-written", STAGING, "the old resume point holds; the temp file is "
          "swept"),
    Point("resume.renamed", STAGING, "the new resume point holds"),
    Point("install.read-back", STAGING, "every block is in the slot, no identity: not "
          "staged; the resume point saved before the read-back names every block, so the "
          "next staging reads back, it does not download", downloaded=True),
    Point("install.identity-written", STAGING, "the slot names the release, the state does "
          "not say staged: the resume point (all blocks) makes the next staging a read-back, "
          "not a download", downloaded=True),
    Point("stage.written", STAGING, "the slot is staged (its mark in the boot env); the "
          "state still shows progress, which the next pass replaces", downloaded=True),
    Point("trial.armed", STAGING, "the trial is armed, the reboot not done: the device "
          "resets into the trial, which is judged as if the daemon had rebooted",
          boot_env=True),
    Point("confirm.marked", ("confirmed", "pin-resume"), "the slot is good in the boot env: "
          "the state's trial is stale and the next pass sees the slot confirmed", boot_env=True),
    Point("rollback.env-written", ("rolled-back", "manual-rollback"), "the default is the "
          "good slot, the failure kept first: the reset boots it", boot_env=True),
    Point("request.applied", ("manual-rollback", "cancel", "pin-resume"), "the request's "
          "state is written, the request still in the inbox: taking it again writes the "
          "same state"),
    *(Point(name, flows, safe, ("grub",), in_slice=name in SERVICE_SLICE) for name, flows, safe in (
        ("services.staged", SERVICES, "the artifacts are whole in the store, the state does "
         "not say staged: the next pass stages again and finds them there (no fetch)"),
        ("services.switched", SERVICES, "the store switched, the state says staged: observe "
         "reads the switch from the store, and the update goes on from the restart"),
        ("services.restarted", SERVICES, "the new gateway runs, the step not recorded: it is "
         "restarted again, then probed"),
        ("services.committed", ("service-confirmed",), "the store committed, the state still "
         "holds the update: the next pass confirms again (committing nothing twice)"),
        ("services.restoring", ("service-restored",), "the failure is kept first: the next "
         "pass finishes the restore, never confirms"),
        ("service-record.temp-written", SERVICES, "the old record holds (the switch not "
         "made); the temp file is swept when the store opens"),
        ("service-record.renamed", SERVICES, "the new record holds, its link old: the store's "
         "open makes the link agree (rolled forward)"),
        ("service-link.temp-written", SERVICES, "the record is new, the link old: the temp "
         "link is removed and the link made to agree when the store opens"),
        ("service-link.renamed", SERVICES, "record and link agree (new)"),
        ("service-data.copied", SERVICES, "the copy is a temporary directory, nothing "
         "switched: the store's open removes it, the switch copies again"),
        ("service-data.renamed", SERVICES, "the copy is whole, nothing switched: the switch "
         "copies again over it"),
        ("service-data.moved-aside", ("service-restored",), "the data dir is gone, the copy "
         "whole: the restore runs again and renames the copy into place"),
        ("service-data.put-back", ("service-restored",), "the data is back, the migrated "
         "one aside: the restore runs again and removes what is aside"),
    )),
    Point("grubenv.overwritten", ALL_FLOWS, "grubenv is the new block (overwritten in "
          "place; a kill keeps the page cache)", ("grub",), boot_env=True),
    Point("grub.env-written", ALL_FLOWS, "grubenv new, grubenv.bak old: the backup is only "
          "read when grubenv is lost", ("grub",), boot_env=True),
    Point("grubenv-backup.temp-written", ALL_FLOWS, "as grub.env-written", ("grub",),
          boot_env=True),
    Point("grubenv-backup.renamed", ALL_FLOWS, "both copies new", ("grub",), boot_env=True),
    Point("ubootenv.copy-written", ALL_FLOWS, "the copy written carries the higher flag; the "
          "other copy stays the valid older one", ("uboot",), boot_env=True),
    Point("uboot.env-written", ALL_FLOWS, "the env is new, the backup file old (read only "
          "when both copies are lost)", ("uboot",), boot_env=True),
    Point("bls.entry-renamed", ("confirmed", "rolled-back", "pin-resume"),
          "each change is ordered so that either name of the entry boots a good slot: "
          "counted before targeted, untargeted before made unbootable (a rollback to a "
          "good slot only retargets loader.conf, and a cancel marks bad an entry the "
          "staging already made unbootable: no rename)", ("bls",), boot_env=True),
    Point("loader-conf.temp-written", ALL_FLOWS, "loader.conf is the old file", ("bls",),
          boot_env=True),
    Point("loader-conf.renamed", ALL_FLOWS, "loader.conf is the new file", ("bls",),
          boot_env=True),
)


def matrix() -> list[tuple[Point, str, str]]:
    """Every (point, flow, backend) of the whole matrix (``make torture``)."""
    return [(point, flow, backend) for point in POINTS for backend in point.backends
            for flow in point.flows]


def slice_() -> list[tuple[Point, str, str]]:
    """``make test``: every point once on its first flow with GRUB (a backend's own
    points: on its backend), and every boot-env point on all three backends; of the service
    update's points only :data:`SERVICE_SLICE`."""
    runs = []
    for point in POINTS:
        if not point.in_slice:
            continue
        backends = point.backends if point.boot_env else point.backends[:1]
        runs += [(point, point.flows[0], backend) for backend in backends]
    return runs


#: Where each point sits (module, and what runs there).
WHERE = {
    "decided": "reconcile.py: after the decision record's fsync, before the executor",
    "audit": "audit.py: the record appended, before its fsync",
    "audit-head": "audit.py: head.json through durable.atomic_write",
    "state": "store.py: state.json through durable.atomic_write",
    "state-copy": "store.py: state.copy.json through durable.atomic_write",
    "install": "release/installer.py",
    "resume": "release/installer.py: staging.resume.json through durable.atomic_write",
    "stage": "executor.py: after the stager, before the state drops the staging",
    "trial": "executor.py: after arm_trial, before the reboot",
    "confirm": "executor.py: after mark_good, before the state and the outcome",
    "rollback": "executor.py: after the backend's rollback, before the reboot",
    "request": "executor.py: after the request's state, before the inbox file goes",
    "services": "executor.py: a service update's step done in the store, not yet in the "
                "state file",
    "service-record": "services.py: a service's record.json through durable.atomic_write",
    "service-link": "services.py: the `current` link (temp symlink, rename)",
    "service-data": "service_data.py: a data copy (temp dir, rename) or its put-back "
                    "(renames)",
    "grubenv": "boot/grubenv.py: the block overwritten in place (a new file: atomic_write)",
    "grub": "boot/grub.py: between grubenv and grubenv.bak",
    "grubenv-backup": "boot/grub.py: grubenv.bak through durable.atomic_write",
    "ubootenv": "boot/ubootenv.py: a copy pwritten, before its fsync",
    "uboot": "boot/uboot.py: between the env copy and the backup file",
    "bls": "boot/bls.py: an entry renamed, before the directory's fsync",
    "loader-conf": "boot/bls.py: loader.conf through durable.atomic_write",
}


def where(point: str) -> str:
    """The module and moment of ``point`` (by its prefix)."""
    return WHERE[point.split(".", 1)[0]]
