"""The ``kruxos`` command: presentation only, no decisions.

``kruxos [--config FILE] COMMAND``; the device config is ``--config``, else
``$KRUXOS_CONFIG``, else ``/etc/kruxos/device.yaml``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from reconciler.config import Device, config_path, load_device
from reconciler.errors import (
    AuditError,
    BootEnvError,
    ChannelUnavailable,
    ConfigError,
    KruxosError,
    LockHeldError,
    ReleaseError,
    SpecError,
    StateError,
    short_error,
)
from reconciler.redact import redact_standard_streams

if TYPE_CHECKING:
    from reconciler.observed import ObservedState


def _now() -> datetime:
    return datetime.now(UTC)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="FILE", default=None,
              help="Device config (default: $KRUXOS_CONFIG, else /etc/kruxos/device.yaml); "
                   "may also follow the command (kruxos update status --config FILE).")
@click.version_option(package_name="kruxos-reconciler", prog_name="kruxos",
                      message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """KruxOS update reconciler: A/B updates driven by a desired-state file."""
    ctx.obj = config


#: The device config this invocation loaded, for the hint an error may need.
_LOADED: dict[str, Device] = {}


def device_of(ctx: click.Context) -> Device:
    """The device config chosen for this invocation."""
    device = load_device(config_path(ctx.find_root().obj))
    _LOADED["device"] = device
    return device


def stopped_simulation_hint() -> str:
    """How to start the simulated device this command used, when it is not running.

    A simulated device (its reboot command is ``reconciler.sim.reboot DIR``) that
    no ``kruxos sim run`` boots has no kernel command line and no channel: the
    error says what could not be read; this says why, and what to run."""
    device = _LOADED.get("device")
    command = device.reboot_command if device is not None else ()
    if "reconciler.sim.reboot" not in command or command[-1] == "reconciler.sim.reboot":
        return ""
    directory = Path(command[-1])
    try:
        os.kill(int((directory / "run" / "sim.pid").read_text()), 0)
    except (OSError, ValueError):
        return (f"\nhint: the simulated device {directory} is not running; start it with "
                f"`kruxos sim run {directory}`")
    return ""


@cli.command()
@click.pass_context
def daemon(ctx: click.Context) -> None:
    """Run the reconciler: follow the spec, stage, reboot, probe, confirm or roll back."""
    from reconciler.daemon import run_daemon

    sys.exit(run_daemon(device_of(ctx)))


# ---- update ---------------------------------------------------------------------------------

@cli.group()
def update() -> None:
    """The device's update state."""


@update.command("status")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable (on a device with slots, with the raw boot state).")
@click.pass_context
def update_status(ctx: click.Context, as_json: bool) -> None:
    """What runs (the boot slot and the other one, or the container), and what happens
    next."""
    from reconciler.cli.status import status_json, status_lines
    from reconciler.inspect import inspect_device

    device = device_of(ctx)
    now = _now()
    view = inspect_device(device, now)
    reconciler, last_pass = _reconciler_facts(device)
    spec = {"path": view.spec_path, "revision": view.revision, "error": view.spec_error}
    if as_json:
        doc = {"ok": True,
               **status_json(view.observed, view.boot_raw, view.policy, view.action, now)}
        doc["device"] = {"id": device.device_id,
                         "config_layers": [str(layer) for layer in device.layers]}
        doc["daemon"] = reconciler
        doc["spec"] = spec
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    lines = status_lines(view.observed, view.policy, view.action, now)
    extra = []
    if view.spec_error is not None:
        kept = (f"the last good revision {view.revision} is in force" if view.revision
                else "no valid spec is in force")
        extra.append(f"Spec: {view.spec_path} is invalid ({_one_line(view.spec_error)}); "
                     f"{kept}")
    if reconciler["pid"] is None:
        extra.append("Daemon: not running (nothing follows the spec until `kruxos daemon` "
                     "starts)" + _last_pass_text(last_pass, now))
    at = len(lines) - 1 if lines and lines[-1].startswith("Next: ") else len(lines)
    for line in lines[:at] + extra + lines[at:]:
        click.echo(line)


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _reconciler_facts(device: Device) -> tuple[dict[str, Any], datetime | None]:
    """Who reconciles the device, as ``--json`` says it (``running``, ``pid``,
    ``last_pass``), and the last pass: when the audit head was last written (every
    pass writes it, a repeated decision too)."""
    from reconciler.inbox import daemon_pid

    pid = daemon_pid(device.data_dir)
    try:
        last = datetime.fromtimestamp((device.audit_dir / "head.json").stat().st_mtime, UTC)
    except OSError:
        last = None
    shown = last.strftime("%Y-%m-%dT%H:%M:%SZ") if last else None
    return {"running": pid is not None, "pid": pid, "last_pass": shown}, last


def _last_pass_text(last: datetime | None, now: datetime) -> str:
    """``; last pass 2026-12-02T15:10:52Z (13s ago)``, or nothing when none is known."""
    if last is None:
        return ""
    ago = format_age(max(0, int((now - last).total_seconds())))
    return f"; last pass {last.strftime('%Y-%m-%dT%H:%M:%SZ')} ({ago} ago)"


def format_age(seconds: int) -> str:
    """``45s``, ``12m``, ``3h``, ``2d``: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ---- audit ----------------------------------------------------------------------------------

@cli.group()
def audit() -> None:
    """Read and verify the audit trail of decisions and outcomes."""


def _reader(ctx: click.Context) -> Any:
    from reconciler.audit import AuditReader
    from reconciler.store import StateStore

    device = device_of(ctx)
    return AuditReader(StateStore(device.data_dir), device.audit_dir)


@audit.command("list")
@click.option("--since", default=None, help="2026-11-29T10:00, or relative: 30m, 1h, 2d.")
@click.option("--action", default=None, help="Only records of this action (stage, confirm...).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.pass_context
def audit_list(ctx: click.Context, since: str | None, action: str | None,
               as_json: bool) -> None:
    """Decisions with their outcomes, oldest first."""
    from reconciler.audit import parse_since

    try:
        since_at = parse_since(since, _now()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    records = list(_reader(ctx).records(since=since_at, action=action))
    outcomes = {r.decision: r for r in records if r.kind == "outcome" and r.decision}
    for record in records:
        if as_json:
            click.echo(record.to_json())
        elif record.kind != "outcome" or record.decision is None:
            click.echo(record.summary_line(outcomes.get(record.seq)))


@audit.command("show")
@click.argument("seq", type=int)
@click.pass_context
def audit_show(ctx: click.Context, seq: int) -> None:
    """One record in full, as JSON (exit 1: there is no record with that number)."""
    reader = _reader(ctx)
    record = reader.get(seq)
    if record is None:
        click.echo(f"error: no audit record #{seq}", err=True)
        sys.exit(1)
    doc = asdict(record)
    if record.kind == "decision":  # with how it ended: its outcome record, if written
        ended = next((r for r in reader.records(after=seq)
                      if r.kind == "outcome" and r.decision == seq), None)
        doc["outcome_record"] = asdict(ended) if ended is not None else None
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False, default=str))


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True, help="The verdict as one JSON object.")
@click.pass_context
def audit_verify(ctx: click.Context, as_json: bool) -> None:
    """Check the hash chain and the head; name the first bad record and every re-anchor."""
    result = _reader(ctx).verify()
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        sys.exit(0 if result.ok else 1)
    if result.ok:
        click.echo(f"audit trail OK: {result.records} records in {result.files} file(s), "
                   f"head #{result.head_seq}{result.reanchor_note()}")
        return
    click.echo(f"audit trail DAMAGED: {result.problem}", err=True)
    sys.exit(1)


# ---- spec -----------------------------------------------------------------------------------

@cli.group()
def spec() -> None:
    """Validate, describe and plan desired-state files."""


@spec.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The verdict as one JSON object.")
def spec_validate(file: Path, as_json: bool) -> None:
    """Check a spec file; errors name the file, the field and the line."""
    from reconciler.specfile import load_spec

    loaded = load_spec(file)  # an invalid spec raises: exit 2 (code ``spec``)
    policy = loaded.policy
    if as_json:
        click.echo(json.dumps({"ok": True, "file": str(file), "name": policy.metadata.name,
                               "revision": loaded.revision, "version": policy.spec.version},
                              ensure_ascii=False))
        return
    click.echo(f"{file}: valid UpdatePolicy {policy.metadata.name!r} "
               f"(revision {loaded.revision}, version {policy.spec.version})")


@spec.command("schema")
def spec_schema() -> None:
    """The JSON Schema of the spec (also committed as specs/updatepolicy.schema.json)."""
    from reconciler.schema import schema_text

    click.echo(schema_text(), nl=False)


@spec.command("plan")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The plan as one JSON object.")
@click.pass_context
def spec_plan(ctx: click.Context, file: Path | None, as_json: bool) -> None:
    """What the reconciler would do now, and why; changes nothing.

    Exit 0: nothing to do; 1: it would act; 2: error.
    """
    from reconciler.actions import Nothing
    from reconciler.inspect import inspect_device
    from reconciler.specfile import load_spec

    candidate = load_spec(file) if file else None  # errors: exit 2, named (code ``spec``)
    view = inspect_device(device_of(ctx), _now(), candidate=candidate)
    if view.action is None or view.policy is None:
        raise SpecError(f"no valid spec ({view.spec_error})")
    source = file or view.spec_path
    pin = view.observed.override
    acts = not isinstance(view.action, Nothing)
    if as_json:
        click.echo(json.dumps({
            "ok": True, "spec": str(source), "revision": view.revision,
            "spec_error": view.spec_error, "observed": _observed_json(view.observed),
            "pin": None if pin is None else {"version": pin.version},
            "action": {"kind": view.action.kind, "reason": view.action.reason},
            "acts": acts}, ensure_ascii=False))
        sys.exit(1 if acts else 0)
    click.echo(f"spec: {source} (revision {view.revision})")
    if view.spec_error:
        click.echo(f"note: the spec file is invalid, planning with the last good spec: "
                   f"{view.spec_error}")
    click.echo(f"observed: {_observed_text(view.observed)}")
    if pin is not None:
        click.echo(f"pin: {pin.version} at this device overrides the spec until the spec's "
                   "version changes or 'kruxos update resume'")
    click.echo(f"plan: {view.action.kind}: {view.action.reason}")
    sys.exit(1 if acts else 0)


def _observed_json(obs: ObservedState) -> dict[str, Any]:
    """What runs, for ``spec plan --json``: the booted slot, or the container."""
    view = obs.container
    if view is None:
        booted = obs.booted_slot
        return {"slot": booted.name, "device": booted.device, "version": booted.version,
                "boot_status": obs.boot_status}
    return {"runtime": "docker", "container": view.name, "version": view.version,
            "status": None if view.current is None else view.current.status}


def _observed_text(obs: ObservedState) -> str:
    """What runs, for ``spec plan``: the booted slot, or the container."""
    view = obs.container
    if view is None:
        booted = obs.booted_slot
        return f"slot {booted.label} runs {booted.version}, {obs.boot_status}"
    if view.engine_error is not None:
        return f"container {view.name}: the engine does not answer ({view.engine_error})"
    if view.current is None:
        return f"container {view.name} does not exist"
    return (f"container {view.name} runs {view.version or 'an unknown release'} "
            f"({view.current.status})")


# ---- sim ------------------------------------------------------------------------------------

@cli.group()
def sim() -> None:
    """The simulated device (the embedded default)."""


@sim.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--bootloader", default="grub", show_default=True,
              type=click.Choice(["grub", "uboot", "bls"]),
              help="Which bootloader the simulated device boots with.")
@click.option("--runtime", default="slots", show_default=True,
              type=click.Choice(["slots", "docker"]),
              help="docker: a container device on a real engine (docs/containers.md).")
@click.option("--engine", default="unix:///run/docker.sock", show_default=True,
              help="With --runtime docker: the engine's socket.")
@click.option("--registry", default="127.0.0.1:5000", show_default=True,
              help="With --runtime docker: the registry its images are pulled from.")
@click.option("--channel", "channel", default=None, metavar="HOST:PORT",
              help="With --runtime docker: where the channel is served "
                   "[default: 127.0.0.1:8080].")
@click.option("--port", default=7800, show_default=True, type=click.IntRange(1, 65535),
              help="With --runtime docker: the port the container answers /health/ready on "
                   "(host network).")
def sim_init(directory: Path, bootloader: str, runtime: str, engine: str,
             registry: str, channel: str | None, port: int) -> None:
    """Create a simulated device: A holds 1.0.0 confirmed, B empty, a signed channel
    (--runtime docker: a container device's files, to publish images to)."""
    from reconciler.sim.device import CHANNEL_PORT, init_device

    if runtime == "docker":
        from reconciler.sim.container import init_container_device, next_steps

        where = channel or CHANNEL_PORT
        made = init_container_device(directory, engine=engine, registry=registry,
                                     channel=where, port=port)
        for line in next_steps(made, registry, where, port):
            click.echo(line)
        return
    if channel is not None or port != 7800:
        raise click.UsageError("--channel and --port apply with --runtime docker only (a "
                               "simulated device serves its own channel)")
    config = init_device(directory, bootloader=bootloader)
    click.echo(f"simulated device created in {config.parent}")
    click.echo(f"export KRUXOS_CONFIG={config}")


@sim.command("publish")
@click.argument("directory", type=click.Path(path_type=Path, exists=True))
@click.argument("version")
@click.option("--behaviour", default="healthy",
              type=click.Choice(["healthy", "gateway-fails", "fails-later", "hangs"]),
              help="How the simulated OS of this release behaves after boot.")
@click.option("--changes", multiple=True, help="A change line (repeatable).")
@click.option("--size-mb", default=3, show_default=True, type=int,
              help="Image size in MB (10^6 bytes, rounded up to whole MiB blocks).")
@click.option("--image-key", "image_keys", multiple=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A public key the image carries, its trust root (repeatable; "
                   "default keys/release.pub).")
@click.option("--sign-key", "sign_keys", multiple=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A key that signs the channel (repeatable; default keys/release.key).")
@click.option("--service", default=None, metavar="NAME",
              help="Publish a service-only release: the root image of the release before, "
                   "a new artifact of this service (behaving as --behaviour says).")
@click.option("--data-dir", default=None, metavar="DIR",
              help="With --service: the service's data directory (under the device's "
                   "service-data/); the new version migrates it on start.")
@click.option("--migrates-data", is_flag=True,
              help="With --service: the version migrates data (irreversibly, without "
                   "--data-dir).")
@click.option("--base", default=None, metavar="VERSION",
              help="With --service: the release whose root image it keeps (default: the "
                   "newest before VERSION).")
def sim_publish(directory: Path, version: str, behaviour: str, changes: tuple[str, ...],
                size_mb: int, image_keys: tuple[Path, ...], sign_keys: tuple[Path, ...],
                service: str | None, data_dir: str | None, migrates_data: bool,
                base: str | None) -> None:
    """Build a simulated release and publish it, signed, on the device's channel."""
    from reconciler.sim.device import publish, publish_service

    if service is not None:
        publish_service(directory.resolve(), version, service, behaviour=behaviour,
                        changes=changes, data_dir=data_dir, migrates_data=migrates_data,
                        base=base)
        click.echo(f"published {version} ({service} {version}, {behaviour}; service update, "
                   f"no reboot) on {directory.resolve() / 'channel'}")
        return
    publish(directory.resolve(), version, behaviour=behaviour, changes=changes,
            size=-(-size_mb * 10**6 // (1 << 20)) << 20,
            image_keys=list(image_keys) or None, sign_keys=list(sign_keys) or None)
    click.echo(f"published {version} ({behaviour}) on {directory.resolve() / 'channel'}")


@sim.command("run")
@click.argument("directory", type=click.Path(path_type=Path, exists=True))
@click.option("--watchdog", default=3.0, show_default=True,
              help="Seconds before the watchdog resets a boot that hangs.")
@click.option("--channel-rate", default=0, type=int, metavar="KB_PER_S",
              help="Serve the channel at most this fast (simulates a slow link; 0: no cap).")
@click.option("--channel-auth", default=None, metavar="FILE",
              type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Serve the channel behind HTTP basic auth: FILE holds user:password.")
def sim_run(directory: Path, watchdog: float, channel_rate: int,
            channel_auth: Path | None) -> None:
    """Boot the device in the foreground; reboots restart it; SIGTERM stops it."""
    from reconciler.sim.run import basic_authorization, run_device

    auth = basic_authorization(channel_auth) if channel_auth else None
    sys.exit(run_device(directory, watchdog, channel_rate * 1000, auth))


def _add_release_group() -> None:
    try:
        from reconciler.cli.release import release_group
    except ImportError:
        return
    cli.add_command(release_group, "release")


_add_release_group()


def _add_slot_group() -> None:
    from reconciler.cli.slot import slot_group

    cli.add_command(slot_group, "slot")


_add_slot_group()


def _add_fleetlock_group() -> None:
    from reconciler.cli.fleet import fleetlock_group

    cli.add_command(fleetlock_group, "fleetlock")


_add_fleetlock_group()


def _add_update_commands() -> None:
    from reconciler.cli.update import COMMANDS

    for command in COMMANDS:
        update.add_command(command)


_add_update_commands()


#: The stable code of each error a command can end with (``error.code`` under ``--json``).
ERROR_CODES: tuple[tuple[type[Exception], str], ...] = (
    (SpecError, "spec"), (ConfigError, "config"), (StateError, "state"),
    (LockHeldError, "locked"), (BootEnvError, "boot-env"), (AuditError, "audit"),
    (ReleaseError, "release"), (ChannelUnavailable, "channel"), (KruxosError, "error"),
)


def error_code(exc: Exception) -> str:
    """``error.code`` for an error that ended a command (``internal`` for a bug)."""
    return next((code for kind, code in ERROR_CODES if isinstance(exc, kind)), "internal")


def exit_status(exc: Exception) -> int:
    """1 for a refusal to try again later (another writer holds the device), else 2.

    Every other error that reaches here is an error (bad config, unreadable
    device, a bug), never 1: for ``update check`` 1 means "an update is
    available", and a script must not read a broken device as one."""
    return 1 if isinstance(exc, LockHeldError) else 2


def _fail_at_top(message: str, code: str, status: int) -> NoReturn:
    message += stopped_simulation_hint()
    if "--json" in sys.argv[1:]:
        click.echo(json.dumps({"ok": False, "error": {"code": code, "message": message}},
                              ensure_ascii=False))
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(status)


def config_first(args: list[str]) -> list[str]:
    """``args`` with a ``--config FILE`` given after the command moved before it.

    ``--config`` is an option of ``kruxos`` itself; people also write it after
    the command (``kruxos update status --config FILE``), and no command has an
    option of that name, so it is taken from wherever it stands."""
    rest, moved, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg == "--config" and i + 1 < len(args):
            moved += args[i:i + 2]
            i += 2
            continue
        if arg.startswith("--config="):
            moved.append(arg)
        else:
            rest.append(arg)
        i += 1
    return moved + rest


def main() -> None:
    """Console entry point: clear one-line errors instead of tracebacks, secrets masked."""
    redact_standard_streams()
    try:
        cli.main(args=config_first(sys.argv[1:]), prog_name="kruxos", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if "--json" in sys.argv[1:]:
            _fail_at_top(exc.format_message(), "usage", exc.exit_code)
        exc.show()
        sys.exit(exc.exit_code)
    except KruxosError as exc:
        _fail_at_top(str(exc), error_code(exc), exit_status(exc))
    except Exception as exc:  # noqa: BLE001 - a person sees a message, never a traceback
        _fail_at_top(short_error(exc), "internal", 2)


if __name__ == "__main__":
    main()
