"""``kruxos update check|apply|rollback|confirm|resume|cancel``: a person at the device.

Presentation only. Each command verifies what it shows, hands its request to
the reconciler (see :mod:`reconciler.cli.link`) and reports what the
reconciler recorded. Exit codes scripts can rely on:

=========  =====================================================================
command    exit codes
=========  =====================================================================
check      0 up to date · 1 an update is available · 2 error (channel refused...)
apply      0 staged (and rebooting or armed) · 1 refused or failed · 130 stopped
rollback   0 rolling back (a service or container update: rolled back) · 1 refused
           (nothing good to go back to, or past a data migration) or the service or
           container rollback failed
confirm    0 confirmed · 1 nothing on trial
resume     0 the spec rules again
cancel     0 nothing staged any more
(all)      2 error: bad config, unreadable device
=========  =====================================================================
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

from reconciler.actions import Blocked
from reconciler.audit import AuditRecord
from reconciler.channelwatch import ChannelWatch, device_wariness, view_of
from reconciler.cli.link import Link, connect
from reconciler.config import Device
from reconciler.container_rules import ContainerRollback, container_rollback
from reconciler.decide import (
    cancel_refusal,
    cancels_a_staging,
    downgrade_refusal,
    is_newer,
    rollback_refusal,
    service_rollback_plan,
)
from reconciler.errors import KruxosError
from reconciler.inspect import inspect_device, spec_in_force
from reconciler.observed import ChannelView
from reconciler.quoting import printable
from reconciler.release.features import held_back, newest_installable, skipped, why_not
from reconciler.release.metadata import ChannelMetadata
from reconciler.release.rollout import percent
from reconciler.service_rules import ServiceRollback, service_need
from reconciler.store import StateStore

BAR_WIDTH = 20


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str, code: int = 1, as_json: bool = False, *, why: str = "refused",
          **fields: Any) -> NoReturn:
    """Say ``error: MESSAGE`` (or, with ``--json``, the error document) and exit ``code``.

    ``why`` is the stable machine-readable code of the error (docs/updating.md#exit-codes)."""
    if why == "channel":  # a simulated device that is not running serves no channel
        from reconciler.cli.main import stopped_simulation_hint

        message += stopped_simulation_hint()
    if as_json:
        click.echo(json.dumps({"ok": False, "error": {"code": why, "message": message},
                               **fields}, ensure_ascii=False))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def verified_metadata(device: Device) -> ChannelMetadata:
    """The channel's metadata, verified with the device's own keys (read-only)."""
    spec, error = spec_in_force(device)
    if spec is None:
        raise KruxosError(f"no valid spec ({error})")
    watch = ChannelWatch(device, StateStore(device.data_dir), _now, save_trust=False)
    return watch.fetch(spec.policy.spec.channel.url, _now())


# ---- check ----------------------------------------------------------------------------------

@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Is a newer release on the channel? (metadata verified before anything is shown)"""
    device = _device(ctx)
    try:
        meta = verified_metadata(device)
    except KruxosError as exc:
        _fail(f"cannot check for updates: {exc}", 2, as_json, why="channel")
    runtime, now, wariness = device.runtime, _now(), device_wariness(device)
    observed = inspect_device(device, now, channel=view_of(meta, runtime=runtime, now=now,
                                                            wariness=wariness)).observed
    current = observed.running_version
    latest = newest_installable(meta, runtime=runtime, now=now, wariness=wariness)
    holds = held_back(meta, now, wariness, runtime=runtime)
    newer = latest is not None and is_newer(latest.version, current)
    passed = skipped(meta, runtime=runtime)
    failed = observed.failed if latest is not None and observed.failed is not None \
        and observed.failed.version == latest.version else None
    if as_json:
        click.echo(json.dumps({"ok": True, "current": current,
                               "latest": latest.version if latest else None,
                               "update_available": newer,
                               "failed_here": None if failed is None else {
                                   "version": failed.version, "reason": failed.reason},
                               "changes": list(latest.changes) if latest else [],
                               "skipped": [{"version": r.version, "requires": list(r.requires),
                                            "reason": why} for r, why in passed],
                               "held": [{"version": h.version, "reason": h.reason(),
                                         "offered_at": h.offered_at.isoformat()
                                         if h.offered_at else None,
                                         "share": float(h.share), "place": float(h.place)}
                                        for h in holds],
                               "channel": meta.channel, "serial": meta.serial}))
        sys.exit(1 if newer else 0)
    click.echo(f"Current version: {current or 'unknown'}")
    kind = ""
    if latest is not None and newer and observed.container is not None:
        kind = f" (a container update of {observed.container.label}, no reboot)"
    elif latest is not None and newer and service_need(observed, latest.version) is not None:
        kind = " (service update, no reboot)"
    click.echo(f"Latest version: {latest.version if latest else 'none this device can install'}"
               f"{kind}" if passed else
               f"Latest version: {latest.version if latest else 'none published'}{kind}")
    for rel, why in passed:
        click.echo(f"Skipped {rel.version}: it {why}.")
    for hold in holds:
        click.echo(f"Held back: {hold.reason()}; rolled out to {percent(hold.share)} now.")
    if not newer or latest is None:
        click.echo("KruxOS is up to date.")
        sys.exit(0)
    if failed is not None:
        click.echo(f"Note: {latest.version} failed on this device and was rolled back "
                   f"({printable(failed.reason)}); the device does not retry it until the "
                   "desired version changes.")
    click.echo(f"Changes in {latest.version}:")
    for line in latest.changes:
        click.echo(f"- {line}")
    click.echo(f"Run 'kruxos update apply{' ' + latest.version if failed else ''}' to "
               f"{'try it again' if failed else 'install'}.")
    sys.exit(1)


# ---- apply ----------------------------------------------------------------------------------

@click.command("apply")
@click.argument("version", required=False)
@click.option("--yes", "-y", is_flag=True, help="Reboot into the update without asking.")
@click.option("--no-reboot", is_flag=True, help="Stage only; activate on the next reboot.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable, never asks.")
@click.pass_context
def apply(ctx: click.Context, version: str | None, yes: bool, no_reboot: bool,
          as_json: bool) -> None:
    """Pin VERSION (default: the latest release), stage it, and offer to reboot."""
    if yes and no_reboot:
        raise click.UsageError("--yes (reboot once staged) and --no-reboot (stage only) "
                               "contradict each other; pass one of them")
    device = _device(ctx)
    asks = device.container is None  # a container device swaps; it asks nothing
    if asks and not (yes or no_reboot or as_json) and not sys.stdin.isatty():
        _fail("no terminal to ask 'Reboot now?' on (stdin is not a terminal): pass --yes to "
              "reboot once staged, or --no-reboot to stage only", 2, as_json, why="usage")
    try:
        meta = verified_metadata(device)
    except KruxosError as exc:
        _fail(f"update refused: {exc}", 1, as_json)
    now, wariness = _now(), device_wariness(device)
    view = inspect_device(device, now, channel=view_of(meta, runtime=device.runtime, now=now,
                                                       wariness=wariness))
    if version == "latest":  # what `update check` calls the newest release
        version = None
    # A named version is a person's choice, taken whatever its rollout; without one, the
    # newest release offered to this device, as `update check` shows it.
    release = meta.find(version) if version else newest_installable(
        meta, runtime=device.runtime, now=now, wariness=wariness)
    if release is None:
        what = version or ("a release this device can install" if meta.releases else "a release")
        _fail(f"{what} is not published on channel {meta.channel!r}", 1, as_json)
    unsupported = why_not(release, runtime=device.runtime)
    if unsupported is not None:
        _fail(f"update refused: {release.version} cannot be installed on this device: it "
              f"{unsupported}", 1, as_json)
    running = view.observed.running_version
    _refuse_downgrade(view, release.version, running, as_json)
    target = view.observed.other_slot
    if running == release.version:
        _done_json_or(as_json, {"version": running, "staged": False, "running": True},
                      f"KruxOS {running} is already running.")
        return
    engine = view.observed.container
    if engine is not None:
        with connect(device) as link:
            start = link.head()
            link.wait_taken(link.send("pin", version=release.version,
                                      reboot="now" if yes else "rules"))
            _follow_container_update(link, engine.name, running, release.version, start,
                                     as_json)
        return
    need = service_need(view.observed, release.version)
    if need is not None:  # the same root image: no reboot, --yes/--no-reboot do not apply
        with connect(device) as link:
            start = link.head()
            link.wait_taken(link.send("pin", version=release.version, reboot="rules"))
            _follow_service_update(link, release.version, need.services, start, as_json)
        return
    reboot = "now" if yes else ("next-boot" if no_reboot or as_json else "ask")
    with connect(device) as link:
        start = link.head()
        pin = link.send("pin", version=release.version, reboot=reboot)
        link.wait_taken(pin)
        already = _slot_holds(view, release.version)
        if already and not as_json:  # no download happens: no bars for one
            click.echo(f"{release.version} is already staged in slot {target.label}; "
                       "nothing to download.")
        bars = _Bars(sys.stdout.isatty() and not as_json and not already, target.device,
                     release.size, release.image, quiet=as_json or already)
        staged = _follow_staging(link, release.version, release.size, start, pin.name,
                                 as_json, bars, view_of(meta, runtime=device.runtime))
        if not staged:
            return
        _after_staging(link, release.version, reboot, as_json, target.label, start)


#: How long ``apply`` follows a service update before it leaves it to the daemon.
SERVICE_FOLLOW_S = 600.0


def _follow_service_update(link: Link, version: str, services: tuple[str, ...], start: int,
                           as_json: bool) -> None:
    """Follow a service update through the trail: download and verify, then
    ``Restarting gateway... ✓`` (confirmed, exit 0) or ``✗`` (restored, exit 1); a restart
    that waits for a maintenance window is said, and left to the daemon (exit 0)."""
    names = ", ".join(services) or "no service"
    if not as_json:
        click.echo(f"{version} is a service update: no reboot.")
    said: set[str] = set()
    deadline = time.monotonic() + SERVICE_FOLLOW_S
    while time.monotonic() < deadline:
        for record in link.records_after(start):
            done = record.kind == "outcome"
            code = record.details.get("code")
            if done and record.action == "stage-services" and code == "ok" \
                    and "staged" not in said and not as_json:
                said.add("staged")
                click.echo(f"Downloading and verifying {names}... ✓ (Ed25519, block by block)")
            elif done and record.action == "stage-services" and code == "refused":
                _fail(f"update refused: {record.outcome}", 1, as_json)
            elif done and record.action == "confirm-services":
                _done_json_or(as_json, {"version": version, "service_update": True,
                                        "services": list(services), "confirmed": True},
                              f"Restarting {names}... ✓\nKruxOS {version} runs: {names} "
                              "healthy, confirmed without a reboot.")
                return
            elif done and record.action == "restore-services":
                if not as_json:
                    click.echo(f"Restarting {names}... ✗")
                _fail(f"{version} was restored without a reboot: "
                      f"{_told(record)}", 1, as_json)
            elif record.kind == "decision" and record.action == "blocked" \
                    and version in record.reason:
                _fail(printable(record.reason), 1, as_json)
            elif record.kind == "decision" and record.action == "wait" \
                    and "waits for the maintenance window" in record.reason:
                _done_json_or(as_json, {"version": version, "service_update": True,
                                        "services": list(services), "confirmed": False},
                              f"Staged. {printable(record.reason)}")
                return
        time.sleep(0.2)
    _fail(f"the service update to {version} did not finish within {SERVICE_FOLLOW_S:g}s; "
          "the daemon goes on with it ('kruxos update status')", 2, as_json, why="unavailable")


def _follow_container_update(link: Link, name: str, running: str | None, version: str,
                             start: int, as_json: bool) -> None:
    """Follow a container update through the trail: the pull by the signed digest, the
    swap, the health check: ``✓`` confirmed (exit 0) or ``✗`` rolled back (exit 1). A swap
    that waits for a maintenance window, or for a person (automatic rollback off), is said
    and left to the daemon (exit 0)."""
    said: set[str] = set()
    doc = {"version": version, "container": name}
    deadline = time.monotonic() + SERVICE_FOLLOW_S
    while time.monotonic() < deadline:
        for record in link.records_after(start):
            done, code = record.kind == "outcome", record.details.get("code")
            step = (record.action, code)
            if done and step == ("pull-image", "ok") and "pulled" not in said:
                said.add("pulled")
                if not as_json:
                    click.echo(f"Pulling {version} by its signed digest... ✓")
            elif done and record.action == "pull-image" and code != "ok":
                _fail(f"update refused: {_told(record)}", 1, as_json)
            elif done and step == ("swap-container", "ok") and "swapped" not in said:
                said.add("swapped")
                if not as_json:
                    click.echo(f"Swapping container {name}: {running or 'none'} → "
                               f"{version}... ✓")
            elif done and record.action == "confirm-container":
                _done_json_or(as_json, {**doc, "confirmed": True},
                              f"Health check... ✓\nKruxOS {version} runs in container "
                              f"{name}, confirmed without a reboot.")
                return
            elif done and record.action == "rollback-container":
                if not as_json:
                    click.echo("Health check... ✗")
                _fail(f"{version} was rolled back: {_told(record)}", 1,
                      as_json)
            elif record.kind == "decision" and record.action == "blocked" \
                    and version in record.reason:
                _fail(printable(record.reason), 1, as_json)
            elif record.kind == "decision" and record.action == "wait" and (
                    "waits for the maintenance window" in record.reason
                    or "a person decides" in record.reason):
                _done_json_or(as_json, {**doc, "confirmed": False},
                              f"{printable(record.reason)}\n(kruxos update status follows "
                              "it; kruxos update apply --yes swaps outside a window)")
                return
        time.sleep(0.2)
    _fail(f"the container update to {version} did not finish within {SERVICE_FOLLOW_S:g}s; "
          "the daemon goes on with it ('kruxos update status')", 2, as_json, why="unavailable")


def _told(record: AuditRecord) -> str:
    """An outcome's text without its leading code (``ok: kruxos runs 1.0.1 again`` → the
    rest), printable."""
    text = record.outcome or ""
    code = record.details.get("code")
    if isinstance(code, str) and text.startswith(f"{code}: "):
        text = text[len(code) + 2:]
    return printable(text)


def _refuse_downgrade(view: Any, version: str, running: str | None, as_json: bool) -> None:
    refusal = downgrade_refusal(view.policy, running, version)
    if refusal is not None:
        _fail(refusal, 1, as_json)


def _follow_staging(link: Link, version: str, size: int, start: int, pin: str,
                    as_json: bool, bars: _Bars, channel: ChannelView) -> bool:
    """Draw the download and write bars from the reconciler's real progress (of the
    staging this command's request ``pin`` asked for)."""
    bars.start()
    try:
        while True:
            view = inspect_device(link.device, _now(), channel=channel)  # verified once above
            records = list(link.records_after(start))  # read once for both questions
            taken_over = _taken_over(records, pin, version)
            if taken_over is not None:  # the later request stands: no resume sent here
                bars.finish(_progress(link, version, size), "✗ stopped")
                _fail(taken_over, 1, as_json, why="taken-over")
            problem = _stage_problem(link, _since_pin(records, pin), version, view)
            if problem is not None and problem[1] == "unavailable":
                bars.finish(_progress(link, version, size), "✗ not yet")
                _fail(problem[0], 2, as_json, why="unavailable")
            if problem is not None:
                bars.finish(_progress(link, version, size), "✗ refused")
                link.wait_taken(link.send("resume"))
                _fail(f"{problem[0]}; the pin is dropped, the spec rules again", 1, as_json)
            if _slot_holds(view, version):
                bars.finish(size, "✓ (Ed25519)")
                return True
            bars.draw(_progress(link, version, size))
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop = link.send("stop")
        link.stop_local()
        with contextlib.suppress(TimeoutError):
            link.wait_taken(stop, timeout=15)
        done = _progress(link, version, size)
        bars.finish(done, "stopped")
        click.echo(f"Stopped at {done / 1e6:.0f} of {size / 1e6:.0f} MB. The slot stays "
                   "unbootable; run 'kruxos update apply' again to resume the download.")
        sys.exit(130)


def _after_staging(link: Link, version: str, reboot: str, as_json: bool, label: str,
                   start: int) -> None:
    """After the staging: ask, then wait for the reboot or the arm (since ``start``, the
    trail's head before this command's pin)."""
    if as_json:
        if reboot == "now":
            _wait_for_action(link, start, "reboot", as_json)
        _done_json_or(True, {"version": version, "staged": True, "slot": label,
                             "rebooting": reboot == "now"}, "")
        return
    click.echo("Update staged. The new version will activate on reboot.")
    if reboot == "ask":
        try:
            typed = click.prompt("Reboot now? [y/N]", default="", show_default=False,
                                 prompt_suffix=": ")
        except click.exceptions.Abort:  # Ctrl-C or end of input: the answer is "not now"
            link.wait_taken(link.send("reboot", answer="next-boot"))
            click.echo("")
            click.echo(f"Not rebooting: {version} will activate on the next reboot "
                       "('kruxos update cancel' forgets it).")
            sys.exit(130)
        if not sys.stdout.isatty():
            click.echo(typed)  # the answer, as the terminal showed it, in the transcript
        reboot = "now" if typed.strip().lower() in ("y", "yes") else "next-boot"
        start = link.head()
        link.wait_taken(link.send("reboot", answer=reboot))
    if reboot == "now":
        click.echo("Rebooting...")
        _wait_for_action(link, start, "reboot", as_json)
    else:
        if not _armed(link, version):  # a second apply of an armed version: nothing to wait for
            _wait_for_action(link, start, "arm", as_json)
        click.echo(f"{version} will activate on the next reboot.")


#: Requests that end a pin or a staging in progress when a person makes them.
_TAKES_OVER = frozenset({"cancel", "resume", "stop", "rollback-request"})


def _taken_over(records: list[AuditRecord], pin: str, version: str) -> str | None:
    """A request taken after this command's pin (request ``pin``) that supersedes it, said
    as an error.

    Another person (or script) may cancel, stop, resume, roll back or pin
    another version while this command waits for its staging: the command then
    ends, saying who took over, instead of waiting for a staging that will not
    come."""
    pinned = False
    for record in records:
        if record.kind != "decision":
            continue
        if record.details.get("request") == pin:
            pinned = True
        elif record.action == "pin" and record.details.get("version") == version:
            continue  # another apply of the same version asks for the same thing
        elif pinned and (record.action in _TAKES_OVER or record.action == "pin"):
            return (f"{version} was not staged: a later request at the device took over "
                    f"(#{record.seq} {record.action}: {printable(record.reason)})")
    return None


def _since_pin(records: list[AuditRecord], pin: str) -> list[AuditRecord]:
    """The records after this command's pin was taken (its decision names request ``pin``).

    Only they are about the staging it asked for: a pass that ran between the
    command's start and the pin (a ``blocked`` decision for the version a person
    rolled back, which the pin is there to retry) was decided without the pin."""
    for index, record in enumerate(records):
        if record.kind == "decision" and record.details.get("request") == pin:
            return records[index + 1:]
    return []


def _stage_problem(link: Link, records: list[AuditRecord], version: str,
                   view: Any) -> tuple[str, str] | None:
    """Why the staging will not finish now (``records``: those after this command's pin),
    and its error code:
    ``refused`` (a refused release, or blocked), ``unavailable`` (the channel did not
    answer; the device goes on by itself), or ``None``. A staging that ``stopped`` on
    purpose resumes, so it is not a problem."""
    for record in records:
        if record.action == "stage" and record.kind == "outcome" \
                and record.code not in ("ok", "stopped"):
            detail = (record.outcome or "").removeprefix("failed: ")
            if record.code == "unavailable":
                return (f"{version} is not staged yet: {detail}; the pin holds and the device "
                        "goes on when the channel answers ('kruxos update cancel' forgets "
                        "it)", "unavailable")
            return f"update refused: {detail}", "refused"
        if record.kind == "decision" and record.action == "blocked":
            return f"update refused: {record.reason}", "refused"
    if isinstance(view.action, Blocked):  # a repeated decision is not in the trail again
        return f"update refused: {view.action.reason}", "refused"
    if not link.busy() and link.pid is None and not _slot_holds(view, version):
        return ("the reconciler stopped before the update was staged (see kruxos audit "
                "list)", "refused")
    return None


def _slot_holds(view: Any, version: str) -> bool:
    """Staged (or, when the person said yes, already booted on trial: the daemon is fast)."""
    other, booted = view.observed.other_slot, view.observed.booted_slot
    staged = other.version == version and other.mark in ("staged", "good")
    return staged or booted.version == version


def _progress(link: Link, version: str, size: int) -> int:
    staging = link.store.section("staging")
    return int(staging.get("done", 0)) if staging.get("version") == version else 0


def _armed(link: Link, version: str) -> bool:
    """The boot env already holds a trial of ``version`` for the next boot."""
    obs = inspect_device(link.device, _now(), channel=ChannelView()).observed
    return obs.trial == obs.other_slot.name and obs.other_slot.version == version


def _wait_for_action(link: Link, start: int, action: str, as_json: bool = False,
                     timeout: float = 30.0) -> None:
    """Until an outcome of ``action`` is in the trail after record ``start``; a command
    that sees none in ``timeout`` fails (exit 2), never reports what it did not see."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.action == action and r.kind == "outcome" for r in link.records_after(start)):
            return
        time.sleep(0.1)
    _fail(f"the reconciler recorded no {action} within {timeout:g}s (is `kruxos daemon` "
          "stuck? see `kruxos audit list` and its log)", 2, as_json, why="unavailable")


class _Bars:
    """The apply screen: the signature line, and the download and write bars.

    The signature check starts first (the signed metadata) and goes on block by
    block as the image streams in, each block checked against the signed list
    before it is written; the check mark is added only once the slot was read
    back and matched the signed SHA-256. So the first line is printed first, and
    completed last: a refused image never shows a check mark. On a terminal the
    screen is redrawn in place; otherwise it is printed once, at the end.
    """

    LINES = 5

    def __init__(self, live: bool, device_name: str, size: int, image: str,
                 quiet: bool = False) -> None:
        self.live, self.device_name, self.size, self.image = live, device_name, size, image
        self.quiet = quiet
        self.drawn = False

    def start(self) -> None:
        if self.live:
            self._show(0, "")

    def draw(self, done: int) -> None:
        if self.live:
            self._show(done, "")

    def finish(self, done: int, mark: str) -> None:
        if self.live or not self.quiet:
            self._show(done, mark)

    def _show(self, done: int, mark: str) -> None:
        up = f"\x1b[{self.LINES}F" if self.drawn else ""
        verify = f"Verifying signature... {mark}".rstrip()
        click.echo(f"{up}{verify}\x1b[K\n" if self.live else f"{verify}\n", nl=False)
        click.echo(f"Downloading {self.image}... ({self.size / 1e6:.0f} MB)\n"
                   f"{_bar(done, self.size)}\n"
                   f"Writing to inactive partition ({self.device_name})...\n"
                   f"{_bar(done, self.size)}")
        self.drawn = True


def _bar(done: int, size: int) -> str:
    filled = BAR_WIDTH * done // max(size, 1)
    return f"{'█' * filled}{'░' * (BAR_WIDTH - filled)} {100 * done // max(size, 1)}%"


def _done_json_or(as_json: bool, doc: dict[str, Any], text: str) -> None:
    if as_json:
        click.echo(json.dumps({"ok": True, **doc}))
    elif text:
        click.echo(text)


def _device(ctx: click.Context) -> Device:
    from reconciler.cli.main import device_of

    return device_of(ctx)


# ---- rollback, confirm, resume, cancel -------------------------------------------------------

@click.command("rollback")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def rollback(ctx: click.Context, as_json: bool) -> None:
    """Undo the last update now: a service update without a reboot, else go back to the
    previous good slot (this reboots into the previous partition)."""
    device = _device(ctx)
    obs = inspect_device(device, _now()).observed
    undo = container_rollback(obs)
    if undo is not None and obs.container is not None:
        _rollback_container(device, obs.container.name, undo, as_json)
        return
    plan = service_rollback_plan(obs)
    if plan is not None:
        _rollback_services(device, plan, as_json)
        return
    target = obs.other_slot
    if not obs.on_trial:
        refusal = rollback_refusal(obs)
        if refusal:
            _fail(refusal, 1, as_json)
    if not as_json:
        click.echo(f"Rolling back to {target.version} ({target.device}). This reboots into "
                   "the previous partition.")
    _ask(device, "rollback", until="rollback")
    _done_json_or(as_json, {"rolling_back_to": target.version, "slot": target.label},
                  "Rebooting...")


def _rollback_services(device: Device, plan: ServiceRollback, as_json: bool) -> None:
    """Undo a service update (the core chose it: ``service_rollback_plan``); say what the
    reconciler recorded: the services restarted, the version blocked, no reboot."""
    if plan.refusal is not None:
        _fail(plan.refusal, 1, as_json)
    names = ", ".join(plan.services) or "no service"
    back = plan.to_version or "the image's own services"
    if not as_json:
        click.echo(f"Rolling back the service update {plan.version}: {names} back to {back}. "
                   "No reboot.")
    with connect(device) as link:
        start = link.head()
        link.wait_taken(link.send("rollback"))
        _wait_for_action(link, start, plan.action, as_json)
        done = [r for r in link.records_after(start)
                if r.kind == "outcome" and r.action == plan.action]
    outcome = done[-1]
    if outcome.details.get("code") != "ok":
        if not as_json:
            click.echo(f"Restarting {names}... ✗")
        _fail(f"the rollback of {plan.version} failed: {_told(outcome)}", 1,
              as_json)
    _done_json_or(as_json, {"service_rollback": True, "rolled_back": plan.version,
                            "runs": plan.to_version, "services": list(plan.services),
                            "reboot": False, "blocked": plan.version},
                  f"Restarting {names}... ✓\nKruxOS {back} runs again, no reboot; "
                  f"{plan.version} is blocked until the desired version changes.")


def _rollback_container(device: Device, name: str, plan: ContainerRollback,
                       as_json: bool) -> None:
    """Undo a container update (the core chose how: ``container_rollback``); say what the
    reconciler recorded: the container that ran before runs again, the version blocked."""
    if plan.refusal is not None:
        _fail(plan.refusal, 1, as_json)
    back = plan.to_version or "the container that ran before"
    if not as_json:
        click.echo(f"Rolling back container {name}: {plan.version} → {back}. No reboot.")
    outcome = _request_outcome(device, "rollback", "rollback-container", as_json)
    if outcome.details.get("code") != "ok":
        _fail(f"the rollback of {plan.version} failed: {_told(outcome)}", 1,
              as_json)
    _done_json_or(as_json, {"container_rollback": True, "rolled_back": plan.version,
                            "runs": plan.to_version, "container": name, "reboot": False,
                            "blocked": plan.version},
                  f"KruxOS {back} runs again in container {name}, no reboot; "
                  f"{plan.version} is blocked until the desired version changes.")


def _request_outcome(device: Device, kind: str, action: str, as_json: bool,
                     timeout: float = 60.0) -> AuditRecord:
    """Hand ``kind`` to the reconciler; the outcome of ``action`` it then recorded (or its
    refusal, which fails the command with the reconciler's reason)."""
    with connect(device) as link:
        start = link.head()
        link.wait_taken(link.send(kind))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in link.records_after(start):
                if record.kind != "outcome":
                    continue
                if record.action == action:
                    return record
                if record.action == "request-refused":
                    _fail(printable(record.outcome or "refused"), 1, as_json)
            time.sleep(0.1)
    _fail(f"the reconciler recorded no {action} within {timeout:g}s (is `kruxos daemon` "
          "stuck? see `kruxos audit list` and its log)", 2, as_json, why="unavailable")


def _ask(device: Device, kind: str, until: str | None = None) -> None:
    """Hand one request to the reconciler; wait until it is taken (and ``until`` has run)."""
    with connect(device) as link:
        start = link.head()
        link.wait_taken(link.send(kind))
        if until is not None:
            _wait_for_action(link, start, until)




@click.command("confirm")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def confirm(ctx: click.Context, as_json: bool) -> None:
    """Confirm the slot on trial by hand: it becomes the default."""
    device = _device(ctx)
    obs = inspect_device(device, _now()).observed
    if obs.container is not None:
        _confirm_container(device, obs, as_json)
        return
    if not obs.on_trial:
        _fail(f"nothing to confirm: slot {obs.booted_slot.label} is {obs.boot_status}, "
              "not on trial", 1, as_json)
    _ask(device, "confirm", until="confirm")
    _done_json_or(as_json, {"confirmed": obs.booted_slot.version, "slot": obs.booted_slot.label},
                  f"Confirmed: {obs.booted_slot.version} in slot {obs.booted_slot.label} is "
                  "now the default.")


def _confirm_container(device: Device, obs: Any, as_json: bool) -> None:
    """Confirm the container update on trial: the kept old container is removed."""
    view = obs.container
    update = view.update
    if update is None or update.step != "started":
        doing = f"an update to {update.version} is {update.step}" if update else \
            "no update is on trial"
        _fail(f"nothing to confirm: {view.label} runs {view.version or 'an unknown release'}; "
              f"{doing}", 1, as_json)
    outcome = _request_outcome(device, "confirm", "confirm-container", as_json)
    if outcome.details.get("code") != "ok":
        _fail(f"the confirm of {update.version} failed: {_told(outcome)}",
              1, as_json)
    _done_json_or(as_json, {"confirmed": update.version, "container": view.name},
                  f"Confirmed: {update.version} runs in container {view.name}; the old "
                  "container is removed, its image kept until the next confirm.")


@click.command("resume")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def resume(ctx: click.Context, as_json: bool) -> None:
    """Drop the pin made at this device: the spec rules again."""
    device = _device(ctx)
    pin = StateStore(device.data_dir).section("override")
    if not pin:
        _done_json_or(as_json, {"pin": None}, "No pin at this device: the spec rules.")
        return
    _ask(device, "resume")
    _done_json_or(as_json, {"dropped": pin.get("version")},
                  f"Pin of {pin.get('version')} dropped: the spec rules again.")


@click.command("cancel")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def cancel(ctx: click.Context, as_json: bool) -> None:
    """Stop a staging in progress and forget the staged slot (the running version stays)."""
    device = _device(ctx)
    view = inspect_device(device, _now())
    obs = view.observed
    refusal = cancel_refusal(view.policy, obs)
    if refusal is not None:
        _fail(refusal, 1, as_json)
    staging = cancels_a_staging(obs)
    _ask(device, "cancel")
    done = "Staging cancelled" if staging else "Nothing was staged yet"
    if obs.container is not None:
        done = f"Update held: {obs.container.label} keeps what it runs"
    _done_json_or(as_json, {"pinned": obs.booted_slot.version},
                  f"{done}; {obs.booted_slot.version} stays until the spec changes or "
                  "'kruxos update resume'.")


COMMANDS = (check, apply, rollback, confirm, resume, cancel)
