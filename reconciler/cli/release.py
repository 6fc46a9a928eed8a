"""``kruxos release``: the publisher's tools for a signed channel (presentation only).

    kruxos release keygen [--dir D] [--name N]
    kruxos release add CHANNEL [IMAGE] --version V --changes TEXT... [--requires FEATURE...]
                       [--service NAME[@VERSION]=PATH...] [--data-dir NAME=DIR...]
                       [--migrates-data NAME...] [--container-image REPO@sha256:HEX]
                       [--rollout-start T [--rollout-start-percentage P]
                        [--rollout-duration D]]
    kruxos release rollout CHANNEL VERSION [--pause | --duration D | --percentage P |
                                            --start T | --complete]
    kruxos release sign CHANNEL --key KEYFILE... [--expires 30d]
    kruxos release verify CHANNEL [--key PUBFILE...] [--revoked KEYID|PUBFILE...]
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from reconciler.errors import KruxosError
from reconciler.release.channel import (
    DEFAULT_BLOCK_SIZE,
    DRAFT_FILE,
    ServiceSource,
    add_release,
    init_channel,
    set_rollout,
    sign_channel,
    verify_channel,
)
from reconciler.release.features import FEATURES
from reconciler.release.keys import generate_keypair, keyid_of, load_public_key
from reconciler.release.metadata import (
    CONTAINER_FEATURE,
    SERVICE_DATA_FEATURE,
    SERVICE_FEATURE,
    format_time,
)
from reconciler.release.rollout import ROLLOUT_FEATURE, Rollout, parse_rollout, percent
from reconciler.spec import format_duration

_DURATION = re.compile(r"^(\d+)([wdhm])$")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}
_SERVICE = re.compile(r"^([^=@]+)(?:@([^=]+))?=(.+)$")


def _service_sources(values: tuple[str, ...], version: str, data_dirs: tuple[str, ...] = (),
                     migrates: tuple[str, ...] = ()) -> list[ServiceSource]:
    """``--service NAME=PATH`` (the release's version) or ``NAME@VERSION=PATH``, with what
    ``--data-dir NAME=DIR`` and ``--migrates-data NAME`` say of each service's data."""
    dirs = {}
    for value in data_dirs:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise click.BadParameter(f"{value[:60]!r}: write NAME=DIR", param_hint="--data-dir")
        dirs[name] = directory
    sources = []
    for value in values:
        match = _SERVICE.match(value)
        if match is None:
            raise click.BadParameter(f"{value[:60]!r}: write NAME=PATH or NAME@VERSION=PATH",
                                     param_hint="--service")
        name, own, path = match.groups()
        sources.append(ServiceSource(name, own or version, Path(path), dirs.pop(name, None),
                                     name in migrates))
    named = {s.name for s in sources}
    for hint, extra in (("--data-dir", sorted(dirs)),
                        ("--migrates-data", sorted(set(migrates) - named))):
        if extra:
            raise click.BadParameter(f"{extra[0][:40]!r} is not a --service of this release",
                                     param_hint=hint)
    return sources


def _duration(value: str) -> timedelta:
    match = _DURATION.match(value.strip())
    if match is None:
        raise click.BadParameter(f"{value!r}: write a number and a unit: 30d, 12h, 2w, 90m")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@click.group("release")
def release_group() -> None:
    """Publish signed releases: keys, images, metadata."""


@release_group.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("."),
              show_default=True, help="Where to write NAME.key and NAME.pub.")
@click.option("--name", default="release", show_default=True, help="Base name of the files.")
def keygen(directory: Path, name: str) -> None:
    """Create an Ed25519 key pair (keep NAME.key offline, ship NAME.pub in the OS image)."""
    try:
        key_path, pub_path = generate_keypair(directory, name)
        keyid = keyid_of(load_public_key(pub_path))
    except KruxosError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"private key: {key_path} (mode 0600)")
    click.echo(f"public key:  {pub_path} (keyid {keyid})")


@release_group.command()
@click.argument("channel", type=click.Path(path_type=Path, file_okay=False))
@click.argument("image", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--version", "version", required=True,
              help="The release's version (devices write it into the slot identity).")
@click.option("--changes", multiple=True, help="One change line (repeat for more).")
@click.option("--date", "day", help="Release date YYYY-MM-DD (default: today, UTC).")
@click.option("--channel-name", help="Name of a new channel (default: the directory name).")
@click.option("--block-size", type=click.IntRange(min=4096), default=DEFAULT_BLOCK_SIZE,
              show_default=True, help="Bytes per hashed block.")
@click.option("--requires", multiple=True, metavar="FEATURE",
              help="A feature a device must implement to install this release (repeatable); "
                   "devices without it skip the release.")
@click.option("--service", "services", multiple=True, metavar="NAME[@VERSION]=PATH",
              help="A service artifact the release carries (repeatable; list every service "
                   "of the release); VERSION defaults to the release's. The release then "
                   f"requires {SERVICE_FEATURE}.")
@click.option("--data-dir", "data_dirs", multiple=True, metavar="NAME=DIR",
              help="The service's data directory, relative to the device's service data root "
                   "(/var/lib/kruxos/service-data): copied before its switch, put back if "
                   f"it is rolled back (repeatable; the release then requires "
                   f"{SERVICE_DATA_FEATURE}).")
@click.option("--migrates-data", "migrates", multiple=True, metavar="NAME",
              help="This version of the service migrates its data: without --data-dir, no "
                   "rollback goes past it once it has started (repeatable).")
@click.option("--container-image", metavar="REPO@sha256:HEX",
              help="The release's container image, named by its digest (devices with "
                   f"runtime: docker pull exactly it). The release then requires "
                   f"{CONTAINER_FEATURE}. Without IMAGE the release is container-only: "
                   "devices with slots cannot install it.")
@click.option("--rollout-start", metavar="TIME",
              help="Roll the release out from TIME (RFC 3339 UTC, 2026-12-05T14:00:00Z, or "
                   f"'now'): devices are offered it a share at a time. The release then "
                   f"requires {ROLLOUT_FEATURE}.")
@click.option("--rollout-start-percentage", type=int, metavar="P",
              help="The share of devices (0-100) offered it at the start (default 0).")
@click.option("--rollout-duration", metavar="DURATION",
              help="How long from the start to every device (48h, 2d12h); without it the "
                   "share stays at --rollout-start-percentage.")
def add(channel: Path, image: Path | None, version: str, changes: tuple[str, ...], day: str | None,
        channel_name: str | None, block_size: int, requires: tuple[str, ...],
        services: tuple[str, ...], data_dirs: tuple[str, ...],
        migrates: tuple[str, ...], container_image: str | None, rollout_start: str | None,
        rollout_start_percentage: int | None, rollout_duration: str | None) -> None:
    """Copy IMAGE (and any service artifacts) into CHANNEL and list it (run `sign` to
    publish); without IMAGE, list a container-only release (--container-image)."""
    try:
        when = date.fromisoformat(day) if day else None
    except ValueError as exc:
        raise click.BadParameter(f"--date {day!r}: expected YYYY-MM-DD") from exc
    try:
        rollout = _rollout_of(rollout_start, rollout_start_percentage, rollout_duration)
        if not (channel / DRAFT_FILE).exists():
            init_channel(channel, channel_name or channel.resolve().name)
        rel = add_release(channel, image, version, list(changes), when, block_size=block_size,
                          requires=requires,
                          services=_service_sources(services, version, data_dirs, migrates),
                          container_image=container_image, rollout=rollout)
    except KruxosError as exc:
        raise click.ClickException(str(exc)) from exc
    if not rel.has_root_image:
        click.echo(f"added {rel.version}: container image {rel.container_image} (no root "
                   "image: devices with slots cannot install it)")
    else:
        click.echo(f"added {rel.version}: {channel / rel.image}, {rel.size} bytes, "
                   f"{len(rel.blocks)} blocks, sha256 {rel.sha256}")
    if rel.container_image and rel.has_root_image:
        click.echo(f"  container image {rel.container_image}")
    for svc in rel.services:
        click.echo(f"  service {svc.name} {svc.version}: {channel / svc.file}, {svc.size} bytes, "
                   f"{len(svc.blocks)} blocks, sha256 {svc.sha256}")
        if svc.data_dir is not None:
            click.echo(f"    data: {svc.data_dir} (copied before the switch, put back on a "
                       "rollback)")
        if svc.irreversible:
            click.echo("    migrates data irreversibly: no rollback past this version once it "
                       "has started")
    if rel.rollout is not None:
        click.echo(f"  {_rollout_text(rel.rollout)}")
    if rel.requires:
        click.echo(f"requires {', '.join(rel.requires)}: devices that do not implement it "
                   "skip this release (the signed metadata becomes format 2)")
    unknown = [name for name in rel.requires if name not in FEATURES]
    if rel.services and SERVICE_FEATURE in unknown:
        unknown.remove(SERVICE_FEATURE)
        click.echo(f"note: this kruxos does not implement {SERVICE_FEATURE} yet: devices "
                   "running this version skip the release", err=True)
    if unknown:
        click.echo(f"note: this kruxos does not implement {', '.join(unknown)}; check the "
                   "spelling (devices running this version skip the release)", err=True)
    click.echo(f"not published yet: run `kruxos release sign {channel} --key KEYFILE`")


def _rollout_of(start: str | None, percentage: int | None, duration: str | None,
                now: datetime | None = None) -> Rollout | None:
    """The rollout ``release add`` was given (``None``: none), checked as a device checks it."""
    if start is None:
        if percentage is not None or duration is not None:
            raise click.BadParameter("give --rollout-start too (when the rollout begins)",
                                     param_hint="--rollout-start-percentage/--rollout-duration")
        return None
    doc: dict[str, Any] = {"start": format_time(now or datetime.now(UTC))
                           if start == "now" else start}
    if percentage is not None:
        doc["startPercentage"] = percentage
    if duration is not None:
        doc["duration"] = duration
    return _checked_rollout(doc)


def _checked_rollout(doc: dict[str, Any]) -> Rollout:
    """``doc`` parsed as a device parses a release's ``rollout``, errors named by option."""
    try:
        rollout = parse_rollout(doc, "rollout", (ROLLOUT_FEATURE,))
    except KruxosError as exc:
        text = str(exc).removeprefix("channel metadata: ")
        for field_, option in (("rollout.startPercentage", "--rollout-start-percentage"),
                               ("rollout.start", "--rollout-start"),
                               ("rollout.duration", "--rollout-duration")):
            text = text.replace(field_, option)
        raise click.BadParameter(text) from exc
    assert rollout is not None, "a rollout was given"
    return rollout


def _rollout_text(rollout: Rollout, now: datetime | None = None) -> str:
    """``rollout: from 10 % at 2026-12-05T14:00:00Z to 100 % in 2d (23 % now)``."""
    moment = now or datetime.now(UTC)
    start = format_time(rollout.start)
    share = percent(rollout.share(moment))
    if rollout.duration is None:
        return (f"rollout: held at {rollout.start_percentage} % from {start} ({share} now; "
                "`kruxos release rollout --duration` resumes it)")
    return (f"rollout: from {rollout.start_percentage} % at {start} to 100 % in "
            f"{format_duration(rollout.duration)} ({share} now)")


@release_group.command("rollout")
@click.argument("channel", type=click.Path(path_type=Path, file_okay=False))
@click.argument("version")
@click.option("--pause", is_flag=True,
              help="Hold the share where it is now (rounded up): no more devices are offered "
                   "the release until --duration resumes it.")
@click.option("--duration", metavar="DURATION",
              help="From now, grow the share from where it is to 100 % in DURATION (resumes "
                   "a paused rollout, or changes its pace).")
@click.option("--percentage", type=int, metavar="P",
              help="Set the share to P now (with --duration: grow from P; without: hold at P). "
                   "A lower share takes the release back from devices not yet updated.")
@click.option("--start", metavar="TIME",
              help="Start the rollout afresh at TIME (RFC 3339 UTC or 'now'), from "
                   "--percentage (default 0), over --duration.")
@click.option("--complete", is_flag=True,
              help="End the rollout: every device is offered the release at once.")
def rollout_command(channel: Path, version: str, pause: bool, duration: str | None,
                    percentage: int | None, start: str | None, complete: bool) -> None:
    """Change VERSION's phased rollout in CHANNEL's draft (run `sign` to publish).

    Without an option, show it. A pause or a new pace never takes the release
    back from a device it has reached: the share starts from where it is now,
    rounded up to a whole percent.
    """
    try:
        draft = json.loads((channel / DRAFT_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{channel / DRAFT_FILE}: not a channel ({exc})") from exc
    now = datetime.now(UTC)
    rel = next((r for r in draft.get("releases", []) if isinstance(r, dict)
                and r.get("version") == version), None)
    if rel is None:
        raise click.ClickException(f"{channel}: version {version} is not in the channel")
    current = _checked_rollout(rel["rollout"]) if isinstance(rel.get("rollout"), dict) else None
    chosen = [name for name, given in (("--pause", pause), ("--complete", complete),
                                       ("--start", start is not None)) if given]
    if len(chosen) > 1 or (pause and (duration or percentage is not None)) \
            or (complete and (duration or percentage is not None)):
        raise click.UsageError("--pause, --complete and --start each go alone (--start with "
                               "--percentage and --duration)")
    if not (pause or complete or duration or start or percentage is not None):
        click.echo(f"{version}: " + (_rollout_text(current, now) if current else
                                     "no rollout: every device is offered it at once"))
        return
    if complete:
        new = None
    elif start is not None:
        new = _rollout_of(start, percentage, duration, now)
    else:
        if current is None and percentage is None:
            raise click.UsageError(f"{version} has no rollout to change: give --start (or "
                                   "--percentage) to begin one")
        reached = math.ceil(current.share(now)) if current is not None else 0
        doc: dict[str, Any] = {"start": format_time(now),
                               "startPercentage": reached if percentage is None
                               else percentage}
        if duration is not None:  # else held where it is (a pause) or at --percentage
            doc["duration"] = duration
        new = _checked_rollout(doc)
        if percentage is not None and percentage < reached:
            click.echo(f"note: {reached} % of devices have been offered {version}; at "
                       f"{percentage} % the ones not yet updated are no longer offered it",
                       err=True)
    try:
        set_rollout(channel, version, new)
    except KruxosError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{version}: " + (_rollout_text(new, now) if new else
                                 "no rollout: every device is offered it at once"))
    click.echo(f"not published yet: run `kruxos release sign {channel} --key KEYFILE`")


@release_group.command()
@click.argument("channel", type=click.Path(path_type=Path, file_okay=False))
@click.option("--key", "keys", multiple=True, required=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="A private key file (repeat to dual-sign during a key rotation).")
@click.option("--expires", default="30d", show_default=True,
              help="How long devices accept this metadata (30d, 12h, 2w).")
def sign(channel: Path, keys: tuple[Path, ...], expires: str) -> None:
    """Sign CHANNEL's releases into a new metadata.json with a higher serial."""
    try:
        doc = sign_channel(channel, list(keys), _duration(expires))
    except KruxosError as exc:
        raise click.ClickException(str(exc)) from exc
    signed = doc["signed"]
    click.echo(f"signed {channel / 'metadata.json'}: channel {signed['channel']!r}, "
               f"serial {signed['serial']}, {len(signed['releases'])} release(s), "
               f"expires {signed['expires']}")
    for entry in doc["signatures"]:
        click.echo(f"  signature by key {entry['keyid']}")


@release_group.command()
@click.argument("channel", type=click.Path(path_type=Path, file_okay=False))
@click.option("--key", "keys", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="A public key a device trusts (repeatable).")
@click.option("--revoked", multiple=True, help="A revoked keyid or .pub file (repeatable).")
def verify(channel: Path, keys: tuple[Path, ...], revoked: tuple[str, ...]) -> None:
    """Say what a device trusting --key would accept from CHANNEL, and why not."""
    now = datetime.now(UTC)
    if not keys:
        click.echo("no --key given: a device trusting no key accepts nothing", err=True)
    try:
        report = verify_channel(channel, list(keys), now, revoked)
    except KruxosError as exc:
        raise click.ClickException(str(exc)) from exc
    for note in report.notes:
        click.echo(note)
    if report.metadata is not None:
        latest = report.metadata.latest()
        for rel in report.metadata.releases:
            mark = " (latest)" if rel is latest else ""
            needs = f", requires {', '.join(rel.requires)}" if rel.requires else ""
            what = f"{rel.image}, {rel.size} bytes" if rel.has_root_image else \
                f"container image {rel.container_image} (no root image)"
            click.echo(f"  {rel.version}{mark}: {what}, {rel.date}{needs}")
            for svc in rel.services:
                click.echo(f"    service {svc.name} {svc.version}: {svc.file}, {svc.size} bytes")
    for problem in report.problems:
        click.echo(f"REFUSED: {problem}", err=True)
    if not report.accepted:
        raise SystemExit(1)
    click.echo(f"a device would accept this channel (checked at {format_time(now)})")
