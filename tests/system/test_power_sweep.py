"""``make torture``: 30 or more real power cuts of the QEMU device, at every moment of an update.

``test_power.py`` (in ``make test``) cuts one update four times at moments a
watcher sees from outside the daemon. This sweep adds the moments that only
the daemon knows, and cuts at exactly that line: the image reads a failpoint
file from its device partition (``deploy/image/rootfs/.../failpoints.conf``),
so the daemon started at the next boot stops itself there with SIGSTOP
(``reconciler/failpoints.py``'s ``stop``), everything it wrote still in the
guest's page cache; the test sees the stopped process, rewrites the file for
the next boot (``sync -f`` of the device partition only: a global ``sync``
would flush the very write the cut is meant to lose) and kills QEMU.

Each round is a fresh device (the factory disk through a new overlay) and
two updates, nine cuts:

1.0.0 -> 1.0.1 (healthy), five cuts, then confirmed on B:
    1. during the download, once the durable staging point passes a seeded
       fraction (the daemon there already carries the next point);
    2. between the image and its identity record (``install.read-back``: all
       read back, no identity yet; or ``install.identity-written``: identity
       synced, the state not told), seeded;
    3. right after the trial is armed (``trial.armed``: the env fsynced, no
       reboot yet): GRUB must boot B on trial;
    4. during the health check, a seeded 0-3 s after the first probe decision;
    5. during the confirm's env write (``grubenv.overwritten``: the block
       overwritten in place, not fsynced; or ``confirm.marked``: fsynced, no
       outcome recorded), seeded.

1.0.1 -> 1.0.2 (gateway fails), four cuts, then rolled back to B:
    6-8. the download, between image and identity, right after the arm (A);
    9. during the rollback's env write (``grubenv.overwritten`` or
       ``rollback.env-written``, seeded), 45 s into a failing trial.

After every cut GRUB must boot the slot the durable state says (after 5 and
9 either the old env or the new one, and the test records which), the boot
must reach the shell from a complete image, and at the end of each update
both slots verify (``kruxos slot verify``), ``kruxos audit verify`` passes
and the staging resumed at or after its durable point. Run by
``make torture`` (``KRUXOS_SWEEP_CUTS``, default 30: rounds of nine until at
least that many; ``KRUXOS_CUT_SEED`` replays a run); each cut's line goes to
``build/system-power-sweep.log`` (``KRUXOS_SWEEP_LOG`` names another, for two
processes running rounds at once: ``-k round4``) and into
``docs/reliability.md`` by hand.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.guest import CHANNEL, TOOLS, Guest, wait_for_daemon
from tests.system.test_power import AUDIT, Cuts
from tests.system.test_update import BOOT, SETTLE, STAGE_AND_REBOOT, VERDICT
from tests.waiting import wait_for

CUTS = int(os.environ.get("KRUXOS_SWEEP_CUTS") or 30)
PER_ROUND = 9
ROUNDS = max(1, math.ceil(CUTS / PER_ROUND))
SEED = int(os.environ.get("KRUXOS_CUT_SEED") or secrets.randbelow(1_000_000))
RIG = "/device/kruxos/rig/failpoints.env"
LOG = Path(os.environ.get("KRUXOS_SWEEP_LOG")
           or Path(__file__).resolve().parents[2] / "build" / "system-power-sweep.log")

pytestmark = [pytest.mark.torture, pytest.mark.needs_tool(*TOOLS), pytest.mark.timeout(5400)]


class Sweep(Cuts):
    """A round's device: arm the next boot's failpoint, wait for the stop, cut."""

    def __init__(self, guest: Guest, log: Path, seed: int, round_no: int) -> None:
        super().__init__(guest, log, seed)
        self.round_no = round_no
        self.count = 0

    def arm(self, point: str | None) -> None:
        """The failpoint of the daemon's next start (``None``: none), durable on the
        device partition alone."""
        if point is None:
            command = f"rm -f {RIG}"
        else:
            command = (f"mkdir -p {os.path.dirname(RIG)} && printf '%s\\n' "
                       f"'KRUXOS_FAILPOINTS={point}=stop' > {RIG}.new && mv {RIG}.new {RIG}")
        self.guest.run(f"{command} && sync -f /device/kruxos").check()
        self.note(f"armed for the next start: {point or 'nothing'}")

    def restart_daemon(self) -> None:
        self.guest.run("systemctl restart kruxos-daemon").check()
        wait_for_daemon(self.guest, SETTLE)

    def stopped_then_cut(self, what: str, then: str | None) -> str:
        """Wait for the daemon to stop at its failpoint, arm ``then`` for the next
        boot, cut; the last audit record before the stop, for the log."""
        self.guest.run(
            "while :; do pid=$(systemctl show -p MainPID --value kruxos-daemon); "
            "[ \"$(sed -n 's/^State:[[:space:]]*\\(.\\).*/\\1/p' /proc/$pid/status "
            "2>/dev/null)\" = T ] && break; sleep 0.05; done",
            timeout=STAGE_AND_REBOOT).check()
        last = self.guest.run(f"tail -qn1 $(ls {AUDIT}/audit-*.jsonl | tail -n1)").output
        record = json.loads(last) if last.startswith("{") else {}
        self.arm(then)
        self.cut(f"{what}: the daemon stopped there (last record: "
                 f"{record.get('kind')} {record.get('action')} #{record.get('seq')})")
        return str(record.get("action"))

    def boot_any(self) -> str:
        self.guest.expect(re.compile(rb"KruxOS: booting slot ([AB])"), BOOT,
                          "GRUB's boot script choosing a slot")
        chosen = re.search(r"KruxOS: booting slot ([AB])", self.guest.console())
        assert chosen is not None
        self.note(f"GRUB: booting slot {chosen.group(1)} (QEMU start {self.guest.boots})")
        self.guest.wait_for_shell(BOOT)
        return chosen.group(1)

    def expect_slot(self, slot: str, why: str) -> None:
        booted = self.boot_any()
        assert booted == slot, (f"after the cut {why}, GRUB booted slot {booted}, not {slot}"
                                f"{self.guest.tail()}")

    def shown_cut(self, text: str) -> None:
        self.count += 1
        line = f"round {self.round_no} cut {self.count}: {text}"
        self.shown.append(line)
        with open(LOG, "a") as out:
            out.write(line + "\n")

    def download_cut(self, version: str, slot: str) -> None:
        fraction = round(self.rng.uniform(0.15, 0.8), 2)

        def durable_past_the_fraction() -> int | None:
            staging = self.state().get("staging")
            if not isinstance(staging, dict) or staging.get("version") != version:
                return None
            done, total = int(staging.get("done", 0)), int(staging.get("total", 1))
            return done if done >= fraction * total else None

        self.durable = wait_for(durable_past_the_fraction, STAGE_AND_REBOOT,
                                f"{version}'s durable staging point past {fraction:.0%}",
                                every=0.3, context=self.guest.tail)
        self.cut(f"during the download of {version}, durable point {self.durable} bytes")
        self.expect_slot(slot, "during the download")
        self.shown_cut(f"{version}: during the download (durable point {self.durable} bytes, "
                       f"past the seeded {fraction:.0%}): GRUB booted {slot}")

    def resumed_check(self, version: str) -> str:
        staged = [r for r in self.audit() if "resumed at block" in json.dumps(r)
                  and version in json.dumps(r)]
        assert staged, f"no outcome of {version}'s staging says it resumed after the cuts"
        found = re.findall(r"resumed at block \d+ of \d+, byte (\d+)", json.dumps(staged))
        assert found and min(int(b) for b in found) >= self.durable, (found, self.durable)
        return f"resumed at bytes {', '.join(found)} (>= the durable {self.durable})"

    def slots_and_audit_verify(self) -> None:
        for slot in ("A", "B"):
            verify = self.guest.run(f"kruxos slot verify {slot}", timeout=300)
            self.note(f"slot verify {slot}", verify.output)
            assert verify.status == 0, verify.output
        self.audit_verifies()


def _staged_and_armed(sw: Sweep, version: str, identity: str, booted: str, trial: str,
                      then: str) -> None:
    """Three cuts of a staging: during the download, at ``identity`` (between the image
    and its identity record), right after the trial is armed; ``then`` is armed for the
    trial boots' daemon."""
    sw.arm(identity)
    sw.restart_daemon()
    sw.write_spec(version)
    sw.download_cut(version, booted)

    sw.stopped_then_cut(f"between {version}'s image and its identity ({identity})",
                        then="trial.armed")
    sw.expect_slot(booted, "between the image and the identity")
    sw.shown_cut(f"{version}: at {identity}: GRUB booted {booted} (slot {trial} not armed)")

    sw.stopped_then_cut(f"right after the trial of {trial} was armed (trial.armed)", then=then)
    sw.expect_slot(trial, "right after the arm")
    env = sw.env()
    assert env.get("KRUXOS_TRIAL") == trial, env
    sw.shown_cut(f"{version}: at trial.armed: GRUB booted {trial} on trial (tries left "
                 f"{env.get('KRUXOS_TRIES')})")


def _forward(sw: Sweep) -> None:
    """1.0.0 on A -> 1.0.1 confirmed on B, five cuts."""
    identity = sw.rng.choice(["install.read-back", "install.identity-written"])
    confirm = sw.rng.choice(["grubenv.overwritten", "confirm.marked"])
    health_delay = round(sw.rng.uniform(0.0, 3.0), 2)
    _staged_and_armed(sw, "1.0.1", identity, booted="A", trial="B", then=confirm)

    sw.watch_then_cut(f"grep -qs '\"action\":\"probe\"' {AUDIT}/audit-*.jsonl", health_delay,
                      "during the trial's health check (after the first probe decision)")
    sw.expect_slot("B", "during the health check")
    env = sw.env()
    assert env.get("KRUXOS_TRIAL") == "B", env
    sw.shown_cut(f"1.0.1: {health_delay} s after the first probe: not confirmed, GRUB booted "
                 f"B on trial again (tries left {env.get('KRUXOS_TRIES')})")

    decided = sw.stopped_then_cut(f"during the confirm ({confirm})", then=None)
    sw.expect_slot("B", "during the confirm")
    env = sw.env()
    kept = "the new env (B the default, no trial)" if env.get("KRUXOS_TRIAL") == "" \
        else f"the old env (B on trial, tries left {env.get('KRUXOS_TRIES')})"
    if confirm == "confirm.marked":
        assert env.get("KRUXOS_TRIAL") == "" and env.get("KRUXOS_DEFAULT") == "B", env
    status = sw.wait_status("1.0.1 confirmed on B after the cuts", "Boot status: CONFIRMED",
                            VERDICT)
    lines = status.splitlines()
    assert lines[:3] == ["Boot slot: B (sda3)", "Version: 1.0.1", "Boot status: CONFIRMED"], status
    sw.shown_cut(f"1.0.1: at {confirm} (the last record before the stop: {decided}): GRUB "
                 f"read {kept}; 1.0.1 confirmed on B")
    resumed = sw.resumed_check("1.0.1")
    sw.slots_and_audit_verify()
    sw.shown.append(f"round {sw.round_no}: 1.0.1 confirmed: {resumed}; both slots and the "
                    "audit chain verify")


def _broken(sw: Sweep) -> None:
    """1.0.1 on B -> 1.0.2 fails its trial on A -> rolled back to B, four cuts."""
    identity = sw.rng.choice(["install.read-back", "install.identity-written"])
    rollback = sw.rng.choice(["grubenv.overwritten", "rollback.env-written"])
    sw.durable = 0
    _staged_and_armed(sw, "1.0.2", identity, booted="B", trial="A", then=rollback)

    decided = sw.stopped_then_cut(f"during the rollback ({rollback})", then=None)
    booted = sw.boot_any()
    if rollback == "rollback.env-written":
        assert booted == "B", f"the rollback's env was fsynced, yet GRUB booted {booted}"
    how = "the new env: B"
    if booted == "A":  # the old env: A on trial again; the decided rollback goes on
        sw.guest.restart_after_reset(VERDICT)
        sw.expect_slot("B", "of the decided rollback's own reboot")
        how = ("the old env: A on trial again, where the daemon finished the decided "
               "rollback at once and rebooted into B")
    status = sw.wait_status("rolled back to B after the cuts", "rolled back from 1.0.2",
                            VERDICT + STAGE_AND_REBOOT)
    lines = status.splitlines()
    assert lines[:3] == ["Boot slot: B (sda3)", "Version: 1.0.1",
                         "Boot status: CONFIRMED (rolled back from 1.0.2)"], status
    sw.shown_cut(f"1.0.2: at {rollback} (the last record before the stop: {decided}): GRUB "
                 f"read {how}; rolled back to 1.0.1 on B")
    resumed = sw.resumed_check("1.0.2")
    sw.slots_and_audit_verify()
    sw.shown.append(f"round {sw.round_no}: rolled back from 1.0.2: {resumed}; both slots "
                    "and the audit chain verify")


@pytest.fixture
def sweep(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sweep]:
    if not CHANNEL.exists():
        pytest.fail(f"no channel disk at {CHANNEL}: build it with `make image`")
    round_no = int(request.param)
    seed = SEED * 100 + round_no
    LOG.parent.mkdir(exist_ok=True)
    with open(LOG, "a") as out:
        out.write(f"round {round_no}, seed {seed} (KRUXOS_CUT_SEED={SEED}); console in "
                  f"{tmp_path}\n")
    with Guest(tmp_path) as guest:
        sw = Sweep(guest, LOG, seed, round_no)
        sw.boot("A")
        yield sw
        print("\n".join(["", f"power cut sweep, round {round_no}, seed {seed}:", *sw.shown]),
              flush=True)


@pytest.mark.parametrize("sweep", range(1, ROUNDS + 1), indirect=True,
                         ids=[f"round{n}-seed={SEED}" for n in range(1, ROUNDS + 1)])
def test_a_round_of_nine_cuts_converges_every_time(sweep: Sweep) -> None:
    _forward(sweep)
    _broken(sweep)
    assert sweep.count == PER_ROUND
