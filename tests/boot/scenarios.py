"""The A/B boot scenarios every bootloader rig and every emulator must pass, bootloader-neutral.

A scenario is a list of steps. A step is either an operation of the backend
Protocol (``reconciler.boot.Backend``: ``set_mark``, ``arm_trial``,
``mark_good``, ``rollback``), applied through the real backend, or a boot. A
power loss and a watchdog reset are boots too: the machine simply starts again
with no confirm in between, which is the point of those scenarios. After each
boot the scenario states the slot the bootloader must have picked and the
boot state the backend must then read (:class:`Expect`).

:func:`run_scenario` drives one scenario with any backend and any way of
booting (real GRUB under QEMU, real U-Boot, systemd-boot, or an emulator):
``backend_factory()`` opens the backend afresh for every step, as the
reconciler does after each reboot, and ``boot_fn()`` boots once and returns
the slot that came up. Nothing here knows which bootloader it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.boot import Backend, BootState, Mark, SlotName

__all__ = ["Op", "Boot", "Expect", "Scenario", "Step", "SCENARIOS", "Observed",
           "run_scenario", "expectations", "mismatches", "TRIES"]

#: Tries every scenario arms a trial with.
TRIES = 3


@dataclass(frozen=True)
class Expect:
    """The slot one boot must pick and the backend-level state it must leave."""

    slot: SlotName
    default: SlotName
    trial: SlotName | None
    tries_left: int
    marks: Mapping[SlotName, Mark]
    fallback: bool  # a fallback trace (reason) is present

    @classmethod
    def observed(cls, slot: str, state: BootState) -> Expect:
        """What a boot actually did, in the same terms, for comparison and messages."""
        return cls(slot=slot,  # type: ignore[arg-type]
                   default=state.default, trial=state.trial, tries_left=state.tries_left,
                   marks=dict(state.marks), fallback=state.fallback_reason is not None)

    def describe(self) -> str:
        marks = " ".join(f"{slot}={mark}" for slot, mark in sorted(self.marks.items()))
        trial = f"trial {self.trial} ({self.tries_left} left)" if self.trial else "no trial"
        trace = "fallback trace" if self.fallback else "no trace"
        return f"booted {self.slot}; default {self.default}, {trial}, {marks}, {trace}"


@dataclass(frozen=True)
class Op:
    """One backend operation, e.g. ``Op("arm_trial", ("B", 3))``."""

    method: str
    args: tuple[object, ...] = ()

    def apply(self, backend: Backend) -> None:
        getattr(backend, self.method)(*self.args)

    def __str__(self) -> str:
        return f"{self.method}({', '.join(map(repr, self.args))})"


@dataclass(frozen=True)
class Boot:
    """One power-on; ``cause`` only names it (``boot``, ``power loss``, ``watchdog reset``)."""

    expect: Expect
    cause: str = "boot"

    def __str__(self) -> str:
        return self.cause


Step = Op | Boot


@dataclass(frozen=True)
class Scenario:
    """A named sequence of steps; ``why`` is the property it pins down."""

    name: str
    why: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.name


Observed = tuple[str, BootState]


def run_scenario(
    scenario: Scenario,
    backend_factory: Callable[[], Backend],
    boot_fn: Callable[[], str],
) -> list[Observed]:
    """Apply the steps through the backend; boot with ``boot_fn``; the (slot, state) per boot."""
    observed: list[Observed] = []
    for step in scenario.steps:
        if isinstance(step, Op):
            step.apply(backend_factory())
        else:
            slot = boot_fn()
            observed.append((slot, backend_factory().read()))
    return observed


def expectations(scenario: Scenario) -> list[Expect]:
    """The expected outcome of each boot, in order."""
    return [step.expect for step in scenario.steps if isinstance(step, Boot)]


def mismatches(scenario: Scenario, observed: Sequence[Observed]) -> list[str]:
    """Readable differences between what the boots did and what the scenario expects."""
    wanted = expectations(scenario)
    problems = []
    if len(observed) != len(wanted):
        problems.append(f"{len(observed)} boots observed, {len(wanted)} expected")
    boots = [step for step in scenario.steps if isinstance(step, Boot)]
    for n, (step, expect, (slot, state)) in enumerate(zip(boots, wanted, observed, strict=False)):
        got = Expect.observed(slot, state)
        if got != expect:
            problems.append(f"{scenario.name}, boot {n + 1} ({step}):\n"
                            f"  expected {expect.describe()}\n  observed {got.describe()}")
    return problems


# -- building blocks -------------------------------------------------------------

def stage(slot: SlotName) -> tuple[Op, ...]:
    """What staging does to the boot state: bad while written, staged once verified."""
    return Op("set_mark", (slot, "bad")), Op("set_mark", (slot, "staged"))


def arm(slot: SlotName, tries: int = TRIES) -> Op:
    return Op("arm_trial", (slot, tries))


def confirm(slot: SlotName) -> Op:
    return Op("mark_good", (slot,))


def rollback(reason: str) -> Op:
    return Op("rollback", (reason,))


def expect(slot: SlotName, default: SlotName = "A", trial: SlotName | None = None,
           tries: int = 0, a: Mark = "good", b: Mark = "staged",
           fallback: bool = False) -> Expect:
    return Expect(slot, default, trial, tries, {"A": a, "B": b}, fallback)


def boot(slot: SlotName, **state: object) -> Boot:
    return Boot(expect(slot, **state))  # type: ignore[arg-type]


def power_loss(slot: SlotName, **state: object) -> Boot:
    return Boot(expect(slot, **state), "power loss")  # type: ignore[arg-type]


def watchdog_reset(slot: SlotName, **state: object) -> Boot:
    return Boot(expect(slot, **state), "watchdog reset")  # type: ignore[arg-type]


def on_trial(tries: int) -> dict[str, object]:
    """The state while B is on trial with ``tries`` left: A still the good default."""
    return {"trial": "B", "tries": tries}


EXHAUSTED: dict[str, object] = {"b": "bad", "fallback": True}
CONFIRMED_B: dict[str, object] = {"default": "B", "b": "good"}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "fresh trial",
        "a staged slot armed with 3 tries boots on the next boot, one try counted first",
        (*stage("B"), arm("B"), boot("B", **on_trial(2))),
    ),
    Scenario(
        "tries counting down",
        "every boot of the trial slot counts one try down before booting it",
        (*stage("B"), arm("B"),
         boot("B", **on_trial(2)), boot("B", **on_trial(1)), boot("B", **on_trial(0))),
    ),
    Scenario(
        "tries exhausted fallback",
        "with no tries left the bootloader boots the good slot, marks the trial bad, says why",
        (*stage("B"), arm("B"),
         boot("B", **on_trial(2)), boot("B", **on_trial(1)), boot("B", **on_trial(0)),
         boot("A", **EXHAUSTED), boot("A", **EXHAUSTED)),
    ),
    Scenario(
        "confirmed slot",
        "after the reconciler's confirm the slot is the default and boots with no counting",
        (*stage("B"), arm("B"), boot("B", **on_trial(2)), confirm("B"),
         boot("B", **CONFIRMED_B), boot("B", **CONFIRMED_B), boot("B", **CONFIRMED_B)),
    ),
    Scenario(
        "manual rollback",
        "a rollback asked for after a confirm makes the previous good slot the default again",
        (*stage("B"), arm("B"), boot("B", **on_trial(2)), confirm("B"),
         boot("B", **CONFIRMED_B), rollback("rollback asked by an operator"),
         boot("A", b="good", fallback=True), boot("A", b="good", fallback=True)),
    ),
    Scenario(
        "failed health check rollback",
        "a trial the reconciler gives up on is marked bad and the good slot boots again",
        (*stage("B"), arm("B"), boot("B", **on_trial(2)), rollback("health check failed"),
         boot("A", **EXHAUSTED), boot("A", **EXHAUSTED)),
    ),
    Scenario(
        "power loss between arming and booting",
        "power lost right after arming (and again mid-trial) never costs the good slot",
        (*stage("B"), arm("B"),
         power_loss("B", **on_trial(2)), power_loss("B", **on_trial(1)),
         power_loss("B", **on_trial(0)), power_loss("A", **EXHAUSTED)),
    ),
    Scenario(
        "hung trial reset by the watchdog",
        "a trial kernel that hangs before confirming is reset until its tries run out",
        (*stage("B"), arm("B"), boot("B", **on_trial(2)),
         watchdog_reset("B", **on_trial(1)), watchdog_reset("B", **on_trial(0)),
         watchdog_reset("A", **EXHAUSTED), boot("A", **EXHAUSTED)),
    ),
)
