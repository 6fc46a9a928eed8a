"""Real power cuts on the QEMU device: ``kill -9`` of QEMU at seeded moments of an update.

The third slice of "the whole device in QEMU" (docs/system-test.md). One
device goes from 1.0.0 to 1.0.1 and loses its power four times on the way;
each cut is ``guest.kill()`` (SIGKILL of QEMU: the guest's page cache is gone,
the disk keeps what the guest's fsyncs made durable) followed by a cold start
on the same overlay:

1. **during the download**, once the daemon's durable resume point (the
   state's ``staging.done``, written only after the resume file is fsynced)
   passes a seeded fraction of the image;
2. **right after the trial is armed**, before the reboot: a watcher in the
   guest sees ``KRUXOS_TRIAL=B`` in ``/boot/grub/grubenv`` and the power goes
   a seeded few hundred milliseconds later;
3. **during the trial's health check**, a seeded moment after the daemon's
   first probe decision reaches the audit trail (two healthy answers 5 s apart
   are needed, so the confirm has not come);
4. **right after the confirm**: the watcher sees ``KRUXOS_DEFAULT=B``.

After every cut: GRUB boots a slot that holds a complete verified image (the
booted slot's ``kruxos slot verify`` passes), ``kruxos audit verify`` passes,
and the device goes on to 1.0.1 confirmed on B. GRUB reads the env through
its own ext4 driver, which does not replay the journal, so cuts 2 and 4 check
that it read what the daemon last made durable (it boots B on trial after
cut 2). The seed is printed and is in every test's id; ``KRUXOS_CUT_SEED``
replays a run.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.guest import CHANNEL, TOOLS, Guest, GuestError
from tests.system.test_update import BOOT, STAGE_AND_REBOOT, VERDICT, Device
from tests.waiting import wait_for

pytestmark = [pytest.mark.needs_tool(*TOOLS), pytest.mark.timeout(3600)]

SEED = int(os.environ.get("KRUXOS_CUT_SEED") or secrets.randbelow(1_000_000))
ENV = "/boot/grub/grubenv"
STATE = "/data/kruxos/state.json"
AUDIT = "/data/kruxos/audit"


class Cuts(Device):
    """The device of this module, its seeded generator, and what each cut showed."""

    def __init__(self, guest: Guest, log: Path, seed: int) -> None:
        super().__init__(guest, log)
        self.seed = seed
        self.rng = random.Random(seed)
        self.shown: list[str] = []
        self.durable = 0  # cut 1's durable staging point, in bytes

    def cut(self, what: str) -> str:
        """Power off now (SIGKILL of QEMU), power on again on the same disk; the console
        of the boot that was cut."""
        console = self.guest.console()
        self.guest.kill()
        self.note(f"POWER CUT: {what}")
        self.guest.start()
        return console

    def watch_then_cut(self, until: str, delay: float, what: str, verify: str = "") -> str:
        """Cut ``delay`` s after the shell condition ``until`` first holds in the guest.

        The watcher runs in the guest (20 ms a look), so the moment does not hang
        on the serial console's round trips; the seeded delay is the cut's moment,
        not a wait for anything. ``verify`` names a slot whose ``kruxos slot
        verify`` runs in the background meanwhile, its verdict on the console.
        The console of the boot that was cut is returned.
        """
        background = (f"(kruxos slot verify {verify} 2>&1; echo KX''VERIFIED{verify} $?) &"
                      if verify else ":")
        watched = self.guest.run(
            f"{background}\nn=0; until {until}; do n=$((n+1)); sleep 0.02; done; "
            f"echo looks=$n; sleep {delay}", timeout=STAGE_AND_REBOOT)
        looks = re.search(r"looks=(\d+)", watched.output)
        return self.cut(f"{what}: {delay} s after it was seen (the watcher looked "
                        f"{looks.group(1) if looks else '?'} times before)")

    def boot_only(self, slot: str) -> None:
        """GRUB's choice and the shell, nothing more: the next step may be seconds away."""
        self.guest.expect(re.compile(rb"KruxOS: booting slot ([AB])"), BOOT,
                          "GRUB's boot script choosing a slot")
        chosen = re.search(r"KruxOS: booting slot ([AB])", self.guest.console())
        assert chosen is not None
        assert chosen.group(1) == slot, (
            f"GRUB booted slot {chosen.group(1)}, not {slot}: it read a boot env other "
            f"than the one the daemon last made durable{self.guest.tail()}")
        self.note(f"GRUB: booting slot {slot} (QEMU start {self.guest.boots})")
        self.guest.wait_for_shell(BOOT)

    def verified(self, console: str, slot: str) -> str:
        """What the background ``slot verify`` of a cut boot said (it may not have ended)."""
        found = re.search(rf"KXVERIFIED{slot} (\d+)", console)
        if found is None:
            return f"slot {slot}'s verify had not ended before the cut (checked at the end)"
        assert found.group(1) == "0", console[-3000:]
        return f"slot {slot} verified (kruxos slot verify: exit 0) before the cut"

    def audit_verifies(self) -> None:
        verify = self.guest.run("kruxos audit verify")
        self.note("audit verify", verify.output)
        assert verify.status == 0, verify.output

    def state(self) -> dict[str, object]:
        doc = json.loads(self.guest.run(f"cat {STATE}").check().output)
        assert isinstance(doc, dict)
        return doc

    def env(self) -> dict[str, str]:
        text = self.guest.run(f"cat {ENV}").check().output
        return dict(line.split("=", 1) for line in text.splitlines()
                    if line.startswith("KRUXOS_") and "=" in line)

    def audit(self) -> list[dict[str, object]]:
        text = self.guest.run(f"cat {AUDIT}/audit-*.jsonl").check().output
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module", params=[SEED], ids=[f"seed={SEED}"])
def cuts(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cuts]:
    if not CHANNEL.exists():
        pytest.fail(f"no channel disk at {CHANNEL}: build it with `make image`")
    seed = int(request.param)
    print(f"\npower cuts: seed {seed} (KRUXOS_CUT_SEED={seed} replays it)", flush=True)
    workdir = tmp_path_factory.mktemp("power")
    log = Path(__file__).resolve().parents[2] / "build" / "system-power.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(f"test log of tests/system/test_power.py, seed {seed}; console in "
                   f"{workdir}\n")
    with Guest(workdir) as guest:
        dev = Cuts(guest, log, seed)
        dev.boot("A")
        yield dev
        try:
            dev.note("audit list", guest.run("kruxos audit list").output)
        except GuestError as exc:
            dev.note("audit list: not read", str(exc)[:200])
        dev.note("what each cut showed", "\n".join(dev.shown))
        print("\n".join(["", f"power cuts, seed {seed}:", *dev.shown]), flush=True)


def test_1_a_cut_during_the_download_keeps_the_device_on_1_0_0(cuts: Cuts) -> None:
    fraction = round(cuts.rng.uniform(0.15, 0.7), 2)
    cuts.write_spec("1.0.1")

    def durable_past_the_fraction() -> int | None:
        staging = cuts.state().get("staging")
        if not isinstance(staging, dict):
            return None
        done, total = int(staging.get("done", 0)), int(staging.get("total", 1))
        return done if done >= fraction * total else None

    # staging.done is written only once the resume point naming it is fsynced.
    cuts.durable = wait_for(durable_past_the_fraction, STAGE_AND_REBOOT,
                            f"the durable staging point past {fraction:.0%}", every=0.3,
                            context=cuts.guest.tail)
    cuts.cut(f"during the download, the durable point at {cuts.durable} bytes "
             f"(seeded: past {fraction:.0%})")
    cuts.boot_only("A")  # B is marked bad while it is written: GRUB keeps to A
    cuts.shown.append(f"cut 1, during the download (durable point {cuts.durable} bytes, past "
                      f"the seeded {fraction:.0%}): GRUB booted A, 1.0.0")


def test_2_a_cut_right_after_the_trial_is_armed_boots_the_trial(cuts: Cuts) -> None:
    """GRUB reads the env the daemon made durable: slot B on trial, one try counted."""
    delay = round(cuts.rng.uniform(0.0, 0.5), 2)
    # The daemon resumes the staging, arms B and would reboot: cut just after the arm.
    before = cuts.watch_then_cut(f"grep -qx KRUXOS_TRIAL=B {ENV}", delay,
                                 "right after the trial was armed", verify="A")
    verified = cuts.verified(before, "A")
    cuts.boot_only("B")
    env = cuts.env()
    assert (env.get("KRUXOS_TRIAL"), env.get("KRUXOS_TRIES")) == ("B", "2"), env
    cuts.note("env after the trial boot", json.dumps(env))
    cuts.shown.append(f"cut 2, {delay} s after the trial was armed, before the reboot: {verified}; "
                      "GRUB booted B on trial and counted a try (KRUXOS_TRIES 3 -> 2): it read "
                      "the env the daemon had made durable")


def test_3_the_staging_resumed_at_or_after_the_durable_point(cuts: Cuts) -> None:
    staged = [r for r in cuts.audit() if "resumed at block" in json.dumps(r)]
    assert staged, "no outcome of the staging says it resumed after the cut"
    text = json.dumps(staged[-1])
    cuts.note("the staging's outcome", text)
    resumed = re.search(r"resumed at block (\d+) of (\d+), byte (\d+)", text)
    assert resumed is not None, text
    byte = int(resumed.group(3))
    assert byte >= cuts.durable, f"resumed at byte {byte}, before the durable {cuts.durable}"
    cuts.shown.append(f"cut 1's staging resumed at block {resumed.group(1)} of "
                      f"{resumed.group(2)} (byte {byte} >= the durable {cuts.durable}), read "
                      "back and verified")


def test_4_a_cut_during_the_health_check_boots_the_trial_again(cuts: Cuts) -> None:
    delay = round(cuts.rng.uniform(0.0, 3.0), 2)
    # Two healthy answers 5 s apart confirm: a cut within 3 s of the first probe
    # decision lands inside the health check.
    cuts.watch_then_cut(f"grep -qs '\"action\":\"probe\"' {AUDIT}/audit-*.jsonl", delay,
                        "during the trial's health check (after the first probe decision)")
    cuts.boot_only("B")
    env = cuts.env()
    cuts.note("env after the second trial boot", json.dumps(env))
    assert (env.get("KRUXOS_TRIAL"), env.get("KRUXOS_TRIES")) == ("B", "1"), env
    cuts.shown.append(f"cut 3, {delay} s after the first health probe: not confirmed; GRUB "
                      "booted B on trial again (KRUXOS_TRIES 2 -> 1)")


def test_5_a_cut_right_after_the_confirm_keeps_1_0_1_confirmed(cuts: Cuts) -> None:
    delay = round(cuts.rng.uniform(0.0, 0.5), 2)
    before = cuts.watch_then_cut(f"grep -qx KRUXOS_DEFAULT=B {ENV}", delay,
                                 "right after the confirm", verify="B")
    verified = cuts.verified(before, "B")
    cuts.boot_only("B")
    env = cuts.env()
    cuts.note("env after the cut", json.dumps(env))
    assert env.get("KRUXOS_DEFAULT") == "B" and env.get("KRUXOS_TRIAL") == "", env
    assert env.get("KRUXOS_B") == "good", env
    status = cuts.wait_status("1.0.1 confirmed on B after the cuts", "Boot status: CONFIRMED",
                              VERDICT)
    lines = status.splitlines()
    assert lines[:3] == ["Boot slot: B (sda3)", "Version: 1.0.1", "Boot status: CONFIRMED"], status
    assert "Previous: 1.0.0 (sda2, available for rollback)" in lines, status
    cuts.shown.append(f"cut 4, {delay} s after the confirm: {verified}; GRUB booted B, the "
                      "default, with no trial: 1.0.1 confirmed")


def test_6_both_slots_verify_and_the_audit_chain_holds(cuts: Cuts) -> None:
    for slot in ("A", "B"):
        verify = cuts.guest.run(f"kruxos slot verify {slot}")
        cuts.note(f"slot verify {slot}", verify.output)
        assert verify.status == 0, verify.output
    cuts.audit_verifies()
    cuts.shown.append("after the four cuts: both slots verify (A 1.0.0, B 1.0.1) and "
                      "kruxos audit verify passes")
