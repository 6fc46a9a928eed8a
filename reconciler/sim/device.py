"""``kruxos sim init`` and ``kruxos sim publish``: a simulated device on disk.

The simulated device is the embedded default: everything a real device has,
as files in one directory, driven by the same daemon, CLI and release tooling.

::

    DIR/device.yaml        the device config (facts: slots, bootloader, keys, ...)
    DIR/spec.yaml          the desired state an operator edits
    DIR/slots/sda2, sda3   slot A and slot B (sparse files: an image from byte 0,
                           the slot identity in the last 4 KiB)
    DIR/boot/grubenv       the GRUB environment block (grub-editenv format)
    DIR/keys/              the channel signing key; the device trusts release.pub
    DIR/channel/           the signed release channel, served over loopback HTTP
    DIR/data/              the data dir: state.json, audit/ (never touched by updates)
    DIR/run/               what one run of the device writes: kernel command line,
                           boot id, port map, logs, root/etc/kruxos/ of the booted image
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from reconciler.boot import open_backend
from reconciler.durable import atomic_write, read_json
from reconciler.errors import ConfigError
from reconciler.release.channel import ServiceSource, add_release, init_channel, sign_channel
from reconciler.release.identity import RECORD_SIZE, SlotIdentity, write_identity
from reconciler.release.keys import generate_keypair
from reconciler.release.metadata import format_time, semver_key
from reconciler.sim.image import build_sim_image, mount
from reconciler.sim.service import artifact_text

SLOT_SIZE = 64 << 20
IMAGE_SIZE = 3 << 20
CHANNEL_PORT = "127.0.0.1:8080"
OS_PORT = "127.0.0.1:7800"
FIRST_CHANGES = {
    "1.0.0": ["Initial release"],
    "1.0.1": ["Fixed rate limiter edge case with concurrent agents",
              "Improved Gmail sync performance",
              "Added filesystem.copy capability"],
}

SPEC = """\
# Desired state of this simulated device. Edit `version` and the daemon follows.
apiVersion: kruxos.io/v1
kind: UpdatePolicy
metadata:
  name: sim-device
spec:
  version: 1.0.0
  channel:
    url: http://{channel}/
  health:
    # Short timings so the simulation is quick; the product defaults are 5s / 2m.
    interval: 1s
    timeout: 8s
"""

DEVICE = """\
# The image layer of this simulated device (a real one: /etc/kruxos/device.yaml);
# its device layer is data/device.yaml.
slots:
  A: {{device: slots/sda2}}
  B: {{device: slots/sda3}}
bootloader:
  backend: {backend}
  env: {env}
trustedKeys: [run/root/etc/kruxos/keys/]   # the booted image's keys: its trust root
dataDir: data
spec: spec.yaml
rebootCommand: [{python}, -m, reconciler.sim.reboot, {dir}]
servicesDir: services      # the service store, beside the data dir (never inside it)
serviceDataDir: service-data   # the services' own data, beside the store (never in data/)
restartCommand: [{python}, -m, reconciler.sim.restart, {dir}]
cmdline: run/cmdline
bootId: run/boot_id
trialTries: 3
resync: 30s
portMap: run/ports.json
"""


def init_device(directory: Path, *, bootloader: str = "grub") -> Path:
    """Create a simulated device: slot A holds 1.0.0 confirmed, slot B is empty."""
    directory = directory.resolve()
    if (directory / "device.yaml").exists():
        raise ConfigError(f"{directory} already holds a simulated device")
    if directory.is_dir() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty: a simulated device is made in a new or "
                          "empty directory (it writes device.yaml, spec.yaml, slots/, boot/, "
                          "keys/, channel/, data/ and run/ there)")
    module = f"reconciler.sim.boot_{bootloader}"
    if bootloader != "grub" and importlib.util.find_spec(module) is None:
        raise ConfigError(f"no simulated bootloader {bootloader!r} (grub, uboot, bls)")
    for sub in ("slots", "boot", "keys", "channel", "data", "run"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    generate_keypair(directory / "keys", "release")
    init_channel(directory / "channel", "stable")
    for version, changes in FIRST_CHANGES.items():
        publish(directory, version, changes=changes, sign=False)
    _sign(directory)
    env = _init_boot(directory, bootloader)
    _make_slots(directory, bootloader, env)
    (directory / "device.yaml").write_text(DEVICE.format(
        python=sys.executable, dir=directory, backend=bootloader,
        env=env.relative_to(directory)))
    (directory / "spec.yaml").write_text(SPEC.format(channel=CHANNEL_PORT))
    # The device layer (docs/configuration.md): what is this device's own.
    atomic_write(directory / "data" / "device.yaml",
                 f"# This device's own settings (the image's are in ../device.yaml).\n"
                 f"deviceId: sim-{_device_id(directory)}\n".encode())
    return directory / "device.yaml"


def _device_id(directory: Path) -> str:
    """A stable id for a simulated device: its directory's name, made a valid id."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", directory.name).strip("-.") or "device"
    return name[:60]


def _init_boot(directory: Path, bootloader: str) -> Path:
    """Lay out the boot environment of ``bootloader``; return its env path.

    GRUB keeps a grubenv file; other bootloaders' simulator modules
    (``reconciler.sim.boot_NAME``) provide ``init_env(boot_dir) -> Path``.
    """
    if bootloader == "grub":
        return directory / "boot" / "grubenv"
    try:
        module = importlib.import_module(f"reconciler.sim.boot_{bootloader}")
    except ImportError:
        raise ConfigError(f"no simulated bootloader {bootloader!r} (grub, uboot, bls)") from None
    env: Path = module.init_env(directory / "boot")
    return env


def _make_slots(directory: Path, bootloader: str, env: Path) -> None:
    """Slot A receives 1.0.0 from the channel (as a factory install would); B stays empty.

    The factory writes what the installer writes: the image from byte 0, then
    the slot identity from the channel's signed metadata.
    """
    for name in ("sda2", "sda3"):
        with open(directory / "slots" / name, "wb") as f:
            f.truncate(SLOT_SIZE)
    signed = read_json(directory / "channel" / "metadata.json")["signed"]
    entry = next(r for r in signed["releases"] if r["version"] == "1.0.0")
    with open(directory / "channel" / entry["image"], "rb") as src, \
            open(directory / "slots" / "sda2", "r+b") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        write_identity(dst.fileno(), SlotIdentity(
            entry["version"], entry["size"], entry["sha256"], signed["channel"],
            signed["serial"], format_time(datetime.now(UTC))))
    backend = open_backend(bootloader, env)
    backend.set_mark("A", "good")
    backend.set_mark("B", "empty")
    mount(directory / "slots" / "sda2", directory / "run" / "root")  # the factory's first boot


def publish(directory: Path, version: str, *, behaviour: str = "healthy",
            changes: Sequence[str] = (), sign: bool = True, size: int = IMAGE_SIZE,
            fields: Mapping[str, str] | None = None,
            image_keys: Sequence[Path] | None = None,
            sign_keys: Sequence[Path] | None = None) -> Path:
    """Build a simulated image of ``version`` and publish it on the device's channel.

    ``fields`` adds lines to the image's release file (``STARTUP_SECONDS``...).
    ``image_keys``: the public keys the image carries, its trust root (by default
    ``keys/release.pub``); ``sign_keys``: the keys that sign the channel (by
    default ``keys/release.key``). A key rotation publishes an image carrying the
    new key, signed with the old one.
    """
    if size > SLOT_SIZE - RECORD_SIZE:
        raise ConfigError(f"an image of {size} bytes does not fit the {SLOT_SIZE}-byte slots "
                          f"(their last {RECORD_SIZE} bytes hold the slot identity)")
    build = directory / "run" / "build" / f"kruxos-{version}.img"
    carried = image_keys if image_keys is not None else [directory / "keys" / "release.pub"]
    build_sim_image(build, version, behaviour, size, fields,
                    keys={path.name: path.read_bytes() for path in carried})
    add_release(directory / "channel", build, version, list(changes) or [f"Release {version}"])
    build.unlink()
    if sign:
        _sign(directory, sign_keys)
    return directory / "channel"


def publish_service(directory: Path, version: str, service: str, *,
                    behaviour: str = "healthy", changes: Sequence[str] = (),
                    sign: bool = True, data_dir: str | None = None,
                    migrates_data: bool = False, base: str | None = None) -> Path:
    """Publish a service-only release: the root image of the newest release before it,
    the services it carried, and a new artifact of ``service`` (its version ``version``,
    its behaviour from its own bytes: :mod:`reconciler.sim.service`).

    A device on the release before moves to it without a reboot (same root image).
    ``base`` names the release whose root image and services it keeps (default: the
    newest before it). ``data_dir`` declares the service's data directory (the artifact
    migrates it on start); ``migrates_data`` says the version migrates data
    (irreversibly, without ``data_dir``).
    """
    channel = directory / "channel"
    draft = read_json(channel / "draft.json")
    before = [r for r in draft.get("releases", []) if semver_key(r["version"])
              < semver_key(version) and base in (None, r["version"])]
    if not before:
        raise ConfigError(f"{channel}: no release {base or 'before ' + version} to take the "
                          "root image of")
    base_release = max(before, key=lambda r: semver_key(r["version"]))
    build = directory / "run" / "build"
    build.mkdir(parents=True, exist_ok=True)
    artifact = build / f"{service}-{version}.svc"
    artifact.write_bytes(artifact_text(service, version, behaviour, data_dir))
    sources = [ServiceSource(s["name"], s["version"], channel / s["file"],
                             s.get("data_dir"), s.get("migrates_data", False))
               for s in base_release.get("services", []) if s["name"] != service]
    sources.append(ServiceSource(service, version, artifact, data_dir, migrates_data))
    add_release(channel, channel / base_release["image"], version,
                list(changes) or [f"{service} {version} (service update of "
                                  f"{base_release['version']})"],
                services=sources)
    artifact.unlink()
    if sign:
        _sign(directory)
    return channel


def _sign(directory: Path, keys: Sequence[Path] | None = None) -> None:
    sign_channel(directory / "channel", list(keys or [directory / "keys" / "release.key"]))
