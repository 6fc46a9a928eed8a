"""Model check of the reconciler's core: every reachable state of a small device, breadth first.

Because ``decide`` is pure and every fact lives on disk, the device is a
small value: the boot script's ``KRUXOS_*`` variables, the release each slot's
own bytes name (``None``: empty or half written), the state document, the
audit trail and its head, the spec's desired version, the inbox of a
person's requests, the booted slot and the clock. From each state the
checker runs every event, with the real ``decide`` and the real executor
over the in-memory parts of :mod:`tests.memory_parts`:

- ``pass``: one reconcile pass (a fresh reconciler, as each pass reads all
  from disk; what it keeps in memory only shapes log lines and wake-ups);
- ``kill@k``: the pass dies after its k-th durable write; the daemon starts
  again over the same disk;
- ``cut@k``: the power goes after the k-th durable write (a write in flight
  is lost whole: each is durable once it returns), then the device boots;
- ``boot``: the reboot the product asked for, the slot chosen by the real
  boot script's rules (:func:`reconciler.sim.bootloader.choose_and_save`);
- ``tick``: the clock moves one health interval, so trial deadlines expire;
- ``edit→V``: the spec's desired version is edited;
- ``ask:…``: a person's request, as ``kruxos update`` writes it.

Kills and cuts, spec edits and requests each have a bound; whether each
release is healthy is fixed for a run (an *oracle*). Two states are the same
when they differ only in what no decision reads (times as ages, capped where
no threshold lies beyond; boot ids as this boot or an earlier one; audit
records beyond the chain's integrity and the last decision).

Invariants, in every state: the boot script would boot a slot holding a
whole release, marked good, or on trial with tries left over a good default;
the audit chain is intact and its head at the end (or one record behind, a
crash the next open finishes); while the booted release is recorded as failed
(a rollback decided and not finished) the next pass rolls back or reboots,
before any request or probe. In the graph: every state where no
event but passes, ticks and asked-for reboots happens ends up with no trial
booted (a trial ends), and no cycle of such events contains a reboot (no
update loop: spec edits, requests and cuts are bounded, so no cycle holds one).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler import reconcile
from reconciler.actions import Action, Reboot, Rollback
from reconciler.boot import BootState, SlotName
from reconciler.boot.abvars import TRIAL, state_of
from reconciler.boot.bls import BlsBackend
from reconciler.config import Device, load_device
from reconciler.errors import BootEnvError
from reconciler.health import HealthAnswer
from reconciler.reconcile import Parts, Reconciler
from reconciler.release.identity import SlotIdentity
from reconciler.sim.boot_bls import boot_once
from reconciler.sim.boot_bls import init_env as init_esp
from reconciler.sim.bootloader import choose_and_save
from reconciler.sim.device import init_device
from reconciler.specfile import LoadedSpec, parse_spec
from tests.memory_parts import (
    ZERO,
    CountedBlsBackend,
    Disk,
    FakeChannel,
    FakeStager,
    Killed,
    MemoryAudit,
    MemoryEnvBackend,
    MemoryInbox,
    MemoryKeeper,
    MemoryMachine,
    MemoryStore,
)

RELEASES = ("1.0.0", "1.0.1", "1.0.2")
INTERVAL = timedelta(seconds=5)
TIMEOUT = timedelta(seconds=10)
#: Ages at or beyond this cross no threshold of the spec below (timeout, interval).
AGE_CAP = 15.0
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SPEC = """\
apiVersion: kruxos.io/v1
kind: UpdatePolicy
metadata:
  name: model
spec:
  version: {version}
  channel:
    url: http://127.0.0.1:9/
  health:
    interval: 5s
    timeout: 10s
"""

#: A person's requests: (label, kind, fields), as ``kruxos update ...`` writes them.
REQUESTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    *((f"apply {v} --reboot now", "pin", {"version": v, "reboot": "now"}) for v in RELEASES),
    ("rollback", "rollback", {}),
    ("confirm", "confirm", {}),
    ("cancel", "cancel", {}),
    ("resume", "resume", {}),
)


@dataclass(frozen=True)
class Bounds:
    """How far the exploration goes."""

    edits: int = 2
    cuts: int = 2
    requests: int = 1
    first_spec: str = "1.0.1"


@dataclass
class World:
    """One state of the device: everything that outlives a process, plus the clock."""

    env: dict[str, str]
    identities: dict[SlotName, str | None]
    doc: dict[str, Any]
    records: list[dict[str, Any]]
    head: tuple[int, str]
    inbox: list[tuple[str, dict[str, Any]]]
    booted: SlotName
    boots: int
    now: datetime
    spec: str
    edits: int = 0
    cuts: int = 0
    requests: int = 0
    reboot_due: bool = False

    def copy(self) -> World:
        return World(dict(self.env), dict(self.identities), json.loads(json.dumps(self.doc)),
                     list(self.records), self.head, list(self.inbox), self.booted, self.boots,
                     self.now, self.spec, self.edits, self.cuts, self.requests,
                     self.reboot_due)


def initial(bounds: Bounds, loader: Loader | None = None) -> World:
    """Slot A runs 1.0.0, confirmed; slot B is empty; the spec wants ``first_spec``."""
    env = (loader or VariablesLoader()).initial()
    return World(env, {"A": "1.0.0", "B": None}, {}, [], (0, ZERO), [], "A", 1, START,
                 bounds.first_spec)


# ---- the bootloaders: where the boot state lives, and how a power-on reads it ---------------

class VariablesLoader:
    """GRUB's and U-Boot's ``KRUXOS_*`` variables (a dict), under the shipped boot script's
    rules (:func:`~reconciler.sim.bootloader.choose_and_save`) and the real backends' code
    (:class:`~tests.memory_parts.MemoryEnvBackend`)."""

    name = "grub/u-boot"

    def initial(self) -> dict[str, str]:
        return {"KRUXOS_DEFAULT": "A", "KRUXOS_TRIAL": "", "KRUXOS_TRIES": "",
                "KRUXOS_A": "good", "KRUXOS_B": "empty", "KRUXOS_FALLBACK": ""}

    def backend(self, env: dict[str, str], disk: Disk, journal: list[str]) -> MemoryEnvBackend:
        return MemoryEnvBackend(env, disk, journal)

    def after(self, backend: Any) -> dict[str, str]:
        return dict(backend.env)

    def boot(self, env: dict[str, str]) -> tuple[dict[str, str], SlotName, bool]:
        """A power-on: (the env after it, the slot booted, whether that slot is on trial)."""
        env = dict(env)
        choice = choose_and_save(env, env.update)
        return env, choice.slot, choice.trial

    def state(self, env: dict[str, str], booted: SlotName) -> BootState:
        return state_of(env, Path("memory-env"), "")

    def on_trial(self, env: dict[str, str], booted: SlotName) -> bool:
        return env.get(TRIAL) == booted


class BlsLoader:
    """systemd-boot's entries and loader.conf on a real ESP directory (in ``scratch``, on a
    tmpfs where there is one): the world keeps the ESP's files and the EFI variables as a
    dict, laid out again before each run of the real ``bls`` backend
    (:class:`~tests.memory_parts.CountedBlsBackend`) or of the simulated systemd-boot
    (:func:`~reconciler.sim.boot_bls.boot_once`, checked against the real one in QEMU), and
    read back after."""

    name = "bls"
    #: The directories the world keeps: loader.conf, the boot entries, entries a repair moved
    #: aside, the EFI variables systemd-boot sets.
    KEPT = ("esp/loader", "esp/loader/entries", "esp/kruxos/damaged", "efivars")

    def __init__(self, scratch: Path) -> None:
        self.root = scratch
        self.esp = init_esp(scratch)
        self.efivars = scratch / "efivars"
        boot_once(self.esp)  # slot A's first boot: LoaderEntrySelected is set
        self.laid_out: dict[str, str] = {}
        self._initial = self._read()
        # what a power-on and a read make of an ESP: pure functions of its files
        self._boots: dict[frozenset[tuple[str, str]], Any] = {}
        self._states: dict[frozenset[tuple[str, str]], Any] = {}

    def initial(self) -> dict[str, str]:
        return dict(self._initial)

    def _lay_out(self, files: dict[str, str]) -> None:
        """Make the scratch ESP hold ``files``, writing only what differs from what it holds."""
        for name in self.laid_out.keys() - files.keys():
            os.unlink(self.root / name)
        for name, text in files.items():
            if self.laid_out.get(name) != text:
                path = self.root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(text.encode("latin-1"))
        self.laid_out = dict(files)

    def _read(self) -> dict[str, str]:
        files = {}
        for kept in self.KEPT:
            try:
                names = os.listdir(self.root / kept)
            except FileNotFoundError:
                continue
            for name in names:
                path = self.root / kept / name
                if path.is_file():
                    files[f"{kept}/{name}"] = path.read_bytes().decode("latin-1")
        self.laid_out = dict(files)
        return files

    def backend(self, env: dict[str, str], disk: Disk, journal: list[str]) -> CountedBlsBackend:
        self._lay_out(env)
        return CountedBlsBackend(self.esp, self.efivars, disk, journal)

    def after(self, backend: Any) -> dict[str, str]:
        """The ESP after a pass (as laid out when the backend wrote nothing)."""
        return self._read() if backend.wrote else dict(self.laid_out)

    def boot(self, env: dict[str, str]) -> tuple[dict[str, str], SlotName, bool]:
        key = frozenset(env.items())
        if key not in self._boots:
            self._lay_out(env)
            try:
                choice = boot_once(self.esp)
                self._boots[key] = (self._read(), choice.slot, choice.trial)
            except BootEnvError as exc:
                self._read()
                self._boots[key] = exc
        found = self._boots[key]
        if isinstance(found, BootEnvError):
            raise found
        return dict(found[0]), found[1], found[2]

    def state(self, env: dict[str, str], booted: SlotName) -> BootState:
        key = frozenset(env.items())
        if key not in self._states:
            self._lay_out(env)
            try:
                self._states[key] = BlsBackend(self.esp, self.efivars).read()
            except BootEnvError as exc:
                self._states[key] = exc
        found = self._states[key]
        if isinstance(found, BootEnvError):
            raise found
        return found  # type: ignore[no-any-return]

    def on_trial(self, env: dict[str, str], booted: SlotName) -> bool:
        try:
            return self.state(env, booted).trial == booted
        except BootEnvError:
            return False  # reported as a violation by the state's own check


Loader = VariablesLoader | BlsLoader


@dataclass(frozen=True)
class Edge:
    """One event from a state: its label, the state it leads to, and what kind it is."""

    label: str
    target: int
    free: bool  # a pass, a tick or an asked-for reboot: what happens with no one around
    reboot: bool  # the reboot the product asked for


@dataclass
class Result:
    """What one exploration found."""

    states: int
    edges: int
    depth: int
    runs: int
    seconds: float
    violations: list[str] = field(default_factory=list)


class Model:
    """The device, the events and the invariants, for one health oracle and one bound."""

    def __init__(self, device: Device, healthy: dict[str, bool], bounds: Bounds,
                 loader: Loader | None = None) -> None:
        self.device = device
        self.healthy = healthy
        self.bounds = bounds
        self.loader: Loader = loader or VariablesLoader()
        self.specs: dict[str, LoadedSpec] = {
            v: parse_spec(SPEC.format(version=v).encode()) for v in RELEASES}
        self.runs = 0
        self.chained: set[str] = set()

    # -- running the product ---------------------------------------------------------------

    def run_pass(self, world: World, kill_after: int | None = None
                 ) -> tuple[World, int, Action | None]:
        """One pass over a copy of ``world``: the new world, its durable writes, the action."""
        w = world.copy()
        self.runs += 1
        disk = Disk(kill_after)
        journal: list[str] = []
        store = MemoryStore(self.device.data_dir, journal, disk, w.doc)
        audit = MemoryAudit(journal, disk, w.records, w.head)
        backend = self.loader.backend(w.env, disk, journal)
        machine = MemoryMachine({s: SlotIdentity(version=v) if v else None
                                 for s, v in w.identities.items()}, w.booted, w.boots, disk)
        inbox = MemoryInbox(w.inbox, disk)
        asked: list[str] = []

        def probe(url: str, timeout: float) -> HealthAnswer:
            identity = machine.identities[machine.booted]
            good = identity is not None and self.healthy.get(identity.version, False)
            return HealthAnswer(healthy=good, status=200 if good else 503)

        parts = Parts(store=store, audit=audit,  # type: ignore[arg-type]
                      backend=backend, channel=FakeChannel(RELEASES),
                      stager=FakeStager(machine, backend, journal), prober=probe,
                      rebooter=lambda reason: disk.write("reboot", lambda: asked.append(reason)),
                      machine=machine,
                      keeper=MemoryKeeper(self.specs[w.spec]),  # type: ignore[arg-type]
                      inbox=inbox)
        action: Action | None = None
        try:
            audit.open()  # the trail opens as the daemon starts
            result = Reconciler(self.device, clock=lambda: w.now, parts=parts).run_pass("daemon")
            action = result.action
        except Killed:
            pass
        w.doc, w.records, w.head = store.doc, audit.records, audit.head
        w.env = self.loader.after(backend)
        w.identities = {s: i.version if i else None for s, i in machine.identities.items()}
        w.inbox = inbox.requests
        w.reboot_due = w.reboot_due or bool(asked)
        return w, len(disk.writes), action

    def initial(self) -> World:
        return initial(self.bounds, self.loader)

    def boot(self, world: World) -> World:
        """A power-on: the boot script picks the slot and saves its countdown."""
        w = world.copy()
        w.env, w.booted, _ = self.loader.boot(w.env)
        w.boots, w.reboot_due = w.boots + 1, False
        return w

    # -- events ------------------------------------------------------------------------------

    def successors(self, world: World) -> Iterator[tuple[str, World, bool, bool, Action | None]]:
        """(label, next world, free, asked-for reboot, the pass's action) for every event."""
        b = self.bounds
        if world.reboot_due:
            yield "boot", self.boot(world), True, True, None
            return
        after, writes, action = self.run_pass(world)
        yield "pass", after, True, False, action
        if world.cuts < b.cuts:
            for k in range(1, writes):
                killed, _, _ = self.run_pass(world, kill_after=k)
                killed.cuts += 1
                yield f"kill@{k}", killed, False, False, None
            for k in range(0, writes + 1):
                cut = self.run_pass(world, kill_after=k)[0] if k else world.copy()
                cut = self.boot(cut)
                cut.cuts += 1
                yield f"cut@{k}", cut, False, False, None
        ticked = world.copy()
        ticked.now += INTERVAL
        yield "tick", ticked, True, False, None
        if world.edits < b.edits:
            for version in RELEASES:
                if version != world.spec:
                    edited = world.copy()
                    edited.spec, edited.edits = version, world.edits + 1
                    yield f"edit→{version}", edited, False, False, None
        if world.requests < b.requests:
            for label, kind, fields in REQUESTS:
                asked = world.copy()
                asked.requests += 1
                asked.inbox.append((f"{asked.requests:05d}-{kind}.json",
                                    {"kind": kind, "at": 0.0, "by": "a person", **fields}))
                yield f"ask:{label}", asked, False, False, None

    # -- what counts as the same state ----------------------------------------------------------

    def key(self, w: World) -> str:
        """The canonical form: what a decision can read, nothing more."""
        doc = json.loads(json.dumps(w.doc))
        this_boot = f"boot-{w.boots}"
        for section, name in (("trial", "boot_id"), ("request", "boot_id")):
            if isinstance(doc.get(section), dict) and name in doc[section]:
                doc[section][name] = "this" if doc[section][name] == this_boot else "earlier"
        trial = doc.get("trial")
        if isinstance(trial, dict):
            for name in ("first_probe_at", "last_probe_at"):
                if trial.get(name):
                    age = (w.now - datetime.fromisoformat(trial[name])).total_seconds()
                    trial[name] = min(age, AGE_CAP)
        for section, name in (("trial_policy", "armed_at"), ("rollback", "at"),
                              ("failed", "at"), ("override", "at")):
            if isinstance(doc.get(section), dict):
                doc[section].pop(name, None)
        last = next(((r["action"], r["reason"]) for r in reversed(w.records)
                     if r["kind"] == "decision"), None)
        end = (w.records[-1]["seq"], w.records[-1]["hash"]) if w.records else (0, ZERO)
        inbox = [(v["kind"], v.get("version"), v.get("reboot")) for _, v in w.inbox]
        return json.dumps([sorted(w.env.items()), sorted(w.identities.items()), doc,
                           w.head == end, last, inbox, w.booted, w.spec, w.edits, w.cuts,
                           w.requests, w.reboot_due], sort_keys=True, default=str)

    # -- invariants ----------------------------------------------------------------------------

    def check(self, w: World) -> list[str]:
        """The invariants every single state must hold."""
        found = []
        bootable = _bootable(w, self.loader)
        if bootable is not None:
            found.append(f"no good slot boots: {bootable}")
        problem = self._audit_problem(w)
        if problem is not None:
            found.append(f"the audit head does not match the trail: {problem}")
        unhealthy = self._unhealthy_default(w)
        if unhealthy is not None:
            found.append(unhealthy)
        return found

    def _unhealthy_default(self, w: World) -> str | None:
        """A release that is not healthy never becomes the default slot's, unless a person
        asked for something (a person may confirm whatever they like)."""
        if w.requests:
            return None
        try:
            default = self.loader.state(w.env, w.booted).default
        except BootEnvError:
            return None  # reported by the bootable check
        version = w.identities.get(default)
        if version is None or self.healthy.get(version, False):
            return None
        return f"{version}, not healthy, is the default slot {default}'s release"

    def _audit_problem(self, w: World) -> str | None:
        """The trail's check, each record walked once (states share their histories)."""
        return MemoryAudit([], records=w.records, head=w.head).problem(self.chained)

    def runs_failed(self, w: World) -> bool:
        """The booted release is recorded as failed: a rollback was decided, not finished
        (a good slot to go back to is there: the check needs one, as a rollback does)."""
        failed = (w.doc.get("failed") or {}).get("version")
        if failed is None or failed != w.identities.get(w.booted) or w.reboot_due:
            return False
        back: SlotName = "B" if w.booted == "A" else "A"
        try:
            good = self.loader.state(w.env, w.booted).marks[back] == "good"
        except BootEnvError:
            return False  # an unreadable boot state is reported by the state's check
        return good and w.identities.get(back) not in (None, failed)

    def on_trial(self, w: World) -> bool:
        """The booted slot is on trial."""
        return self.loader.on_trial(w.env, w.booted)

    @staticmethod
    def unsettled(w: World) -> str | None:
        """Why the device, with no person's request ever made, has neither done what the
        spec asks (run its version) nor said why not: that version recorded as failed, or
        the last decision a block with its reason (a downgrade the spec does not allow)."""
        if w.requests:
            return None  # a person's pin or cancel decides what is wanted
        running = w.identities.get(w.booted)
        failed = (w.doc.get("failed") or {}).get("version")
        if running == w.spec or failed == w.spec:
            return None
        last = next((r for r in reversed(w.records) if r["kind"] == "decision"), None)
        if last is not None and last["action"] == "blocked":
            return None
        return (f"it runs {running} from slot {w.booted}, the spec wants {w.spec} "
                f"(recorded as failed: {failed}; last decision: "
                f"{last['action'] if last else None})")


def _bootable(w: World, loader: Loader) -> str | None:
    """Why the bootloader would not boot a good slot now, or ``None``."""
    try:
        env, booted, trial = loader.boot(w.env)
        state = loader.state(env, booted)
    except BootEnvError as exc:
        return f"the boot state cannot be read or booted: {exc}"

    def whole(slot: SlotName) -> bool:
        return w.identities.get(slot) is not None

    if trial:
        if not whole(booted):
            return f"trial slot {booted} holds no whole release"
        if state.marks[state.default] != "good" or not whole(state.default):
            return f"the fallback {state.default} of trial {booted} is not a good slot"
        return None
    if state.marks[booted] != "good" or not whole(booted):
        return (f"slot {booted} boots, marked {state.marks[booted]}, holding "
                f"{w.identities.get(booted)}")
    return None


@contextmanager
def _quiet() -> Iterator[None]:
    """The reconciler's log lines go to stderr; a model run makes hundreds of thousands."""
    namespace = vars(reconcile)  # the name the reconciler calls, imported from logline
    saved = namespace["log"]
    namespace["log"] = lambda message: None
    try:
        yield
    finally:
        namespace["log"] = saved


def explore(model: Model, limit: int = 3_000_000) -> Result:
    """Breadth first over every reachable state; then the graph's invariants.

    A state is kept as the digest of its canonical form; its world only until
    its events have run (the deeper bounds hold millions of edges).
    """
    started = time.monotonic()
    first = model.initial()
    keys: dict[bytes, int] = {_digest(model.key(first)): 0}
    worlds: list[World | None] = [first]
    parent: list[tuple[int, str] | None] = [None]
    depth = [0]
    edges: list[list[Edge]] = []
    on_trial: list[bool] = []
    unsettled: list[str | None] = []
    violations: list[str] = []
    queue = deque([0])
    with _quiet():
        while queue:
            index = queue.popleft()
            world = worlds[index]
            assert world is not None
            worlds[index] = None
            out: list[Edge] = []
            for problem in model.check(world):
                violations.append(f"{problem}\n  path: {_path(parent, index)}")
            for label, after, free, reboot, action in model.successors(world):
                if label == "pass" and model.runs_failed(world) \
                        and not isinstance(action, Rollback | Reboot):
                    kind = action.kind if action else "none"
                    violations.append(f"the booted release is recorded as failed (a rollback "
                                      f"was decided) but the pass decided {kind}\n  path: "
                                      f"{_path(parent, index)}")
                key = _digest(model.key(after))
                target = keys.get(key)
                if target is None:
                    target = keys[key] = len(worlds)
                    if target >= limit:
                        raise RuntimeError(f"more than {limit} states: the bound is too wide")
                    worlds.append(after)
                    parent.append((index, label))
                    depth.append(depth[index] + 1)
                    queue.append(target)
                out.append(Edge(label, target, free, reboot))
            while len(edges) <= index:
                edges.append([])
                on_trial.append(False)
                unsettled.append(None)
            edges[index] = out
            on_trial[index] = model.on_trial(world)
            unsettled[index] = None if on_trial[index] else model.unsettled(world)
    violations += _graph_violations(on_trial, unsettled, edges, parent)
    return Result(len(worlds), sum(len(e) for e in edges), max(depth), model.runs,
                  time.monotonic() - started, violations)


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


def _path(parent: list[tuple[int, str] | None], index: int) -> str:
    labels = []
    while (step := parent[index]) is not None:
        index, label = step
        labels.append(label)
    return " → ".join(reversed(labels)) or "(the first state)"


def _graph_violations(on_trial: list[bool], unsettled: list[str | None],
                      edges: list[list[Edge]],
                      parent: list[tuple[int, str] | None]) -> list[str]:
    """No reboot inside a cycle of free events; every bottom component has no trial booted
    and, where no person asked for anything, has converged."""
    free = [[e for e in out if e.free] for out in edges]
    component = _components(free)
    found = []
    reported: set[int] = set()
    for index, out in enumerate(free):
        for e in out:
            if e.reboot and component[e.target] == component[index] \
                    and component[index] not in reported:
                reported.add(component[index])
                cycle = _cycle(free, component, e.target, index)
                found.append(f"a cycle of reboots with no spec edit: {_path(parent, index)} "
                             f"→ boot, then {cycle}")
    leaving = {component[i] for i, out in enumerate(free) for e in out
               if component[e.target] != component[i]}
    leaves = set(component) - leaving
    for index, trial in enumerate(on_trial):
        c = component[index]
        if c in leaves and c not in reported and trial:
            reported.add(c)
            found.append(f"a trial that never ends: the booted slot stays on trial with "
                         f"nothing left to happen but passes and ticks\n  path: "
                         f"{_path(parent, index)}")
    for index, why in enumerate(unsettled):
        c = component[index]
        if c in leaves and c not in reported and why is not None:
            reported.add(c)
            found.append(f"the device never converges: {why}, with nothing left to happen "
                         f"but passes and ticks\n  path: {_path(parent, index)}")
    return found


def _cycle(free: list[list[Edge]], component: list[int], start: int, end: int) -> str:
    """The free events leading from ``start`` back to ``end`` inside one component."""
    seen = {start: (start, "")}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == end:
            break
        for e in free[node]:
            if component[e.target] == component[start] and e.target not in seen:
                seen[e.target] = (node, e.label)
                queue.append(e.target)
    labels = []
    node = end
    while node != start and node in seen:
        node, label = seen[node]
        labels.append(label)
    return " → ".join(reversed(labels)) + " → boot"


def _components(graph: list[list[Edge]]) -> list[int]:
    """Tarjan's strongly connected components, without recursion."""
    count = len(graph)
    index_of = [-1] * count
    low = [0] * count
    on_stack = [False] * count
    component = [-1] * count
    stack: list[int] = []
    counter = 0
    found = 0
    for root in range(count):
        if index_of[root] != -1:
            continue
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack[node] = True
            recurse = False
            for position in range(child, len(graph[node])):
                target = graph[node][position].target
                if index_of[target] == -1:
                    work.append((node, position + 1))
                    work.append((target, 0))
                    recurse = True
                    break
                if on_stack[target]:
                    low[node] = min(low[node], index_of[target])
            if recurse:
                continue
            if low[node] == index_of[node]:
                while True:
                    member = stack.pop()
                    on_stack[member] = False
                    component[member] = found
                    if member == node:
                        break
                found += 1
            if work:
                parent_node = work[-1][0]
                low[parent_node] = min(low[parent_node], low[node])
    return component


def replay(model: Model, path: str) -> World:
    """The state a violation's path leads to (``"pass → boot → kill@3"``), to look at."""
    world = model.initial()
    with _quiet():
        for label in path.split(" → "):
            world = next(after for name, after, *_ in model.successors(world) if name == label)
    return world


def model_device(directory: Path) -> Device:
    """The device config the reconciler needs (its files are never touched by the model)."""
    init_device(directory)
    return load_device(directory / "device.yaml")


def scratch_dir(name: str) -> Path:
    """A directory for the ESP the ``bls`` model lays out before each pass: on a tmpfs where
    there is one (tens of thousands of passes each write a few files and fsync them)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"kruxos-model-{name}-", dir=base))


def run(directory: Path, healthy: dict[str, bool], bounds: Bounds,
        report: Callable[[str], None] = print, loader: str = "grub/u-boot") -> Result:
    """Explore one oracle and bound with one bootloader's rules; print the counts."""
    scratch = scratch_dir("bls") if loader == "bls" else None
    try:
        rules: Loader = BlsLoader(scratch) if scratch else VariablesLoader()
        model = Model(model_device(directory), healthy, bounds, rules)
        result = explore(model)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    oracle = ", ".join(f"{v} {'good' if ok else 'bad'}" for v, ok in healthy.items())
    report(f"model check ({rules.name}; {oracle}; edits {bounds.edits}, cuts {bounds.cuts}, "
           f"requests {bounds.requests}): {result.states} states, {result.edges} events, "
           f"depth {result.depth}, {result.runs} passes run, {result.seconds:.1f} s, "
           f"{len(result.violations)} violation(s)")
    return result
