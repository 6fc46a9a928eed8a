"""The device config: what one device *is*, in two layers (``docs/configuration.md``).

- **The image layer** (``/etc/kruxos/device.yaml``, on the read-only root, so
  it comes with the booted image): slot devices, bootloader, the keys the
  image trusts, where the data dir is, how the device reboots — the facts of
  the product, and the trust root.
- **The device layer** (``overlay``, by default ``device.yaml`` in the data
  dir, written once per device): its id, the channel it follows and its
  credentials, the operator group, retention, where the spec is. It may only
  set the keys in :data:`OVERLAY_KEYS`, and may only *add* revoked keys: it can
  narrow trust, never widen it.

What the device *should run* lives in the spec, which can change neither
layer. The image layer is found by ``--config FILE``, else ``$KRUXOS_CONFIG``,
else ``/etc/kruxos/device.yaml``. Relative paths are relative to the file
that names them.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from reconciler.durable import set_data_policy
from reconciler.errors import ConfigError, UrlError
from reconciler.observed import SLOTS, SlotName
from reconciler.redact import register_secret
from reconciler.spec import Duration
from reconciler.urls import parse_url

DEFAULT_PATH = Path("/etc/kruxos/device.yaml")
#: What the device layer may set; everything else belongs to the image.
OVERLAY_KEYS = frozenset({"deviceId", "channel", "group", "audit", "resync", "spec",
                          "revokedKeys", "portMap", "runtime", "container", "fleetLock"})
#: A revoked key may be named by its keyid (16 hex digits) instead of a .pub path.
_KEYID = re.compile(r"^[0-9a-fA-F]{16}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FleetLockConfig(_Model):
    """This device's place in the fleet's reboot slots (the server is the spec's
    ``rollout.fleetLock.url``: one spec serves the whole fleet, the group is the device's)."""

    group: Annotated[str, Field(pattern=r"^[a-zA-Z0-9.-]{1,256}$")] = "default"
    token_file: str | None = Field(default=None, alias="tokenFile")


class SlotConfig(_Model):
    """One root partition: the block device (or, simulated, a file) holding it."""

    device: str


class BootloaderConfig(_Model):
    """Which backend keeps the A/B state, and where its environment is."""

    backend: str = "grub"
    env: str = "/boot/grub/grubenv"


class CredentialsConfig(_Model):
    """How the device proves itself to its channel: HTTP basic or a bearer token.

    The secret itself sits in a file of its own (mode 0600), so the device
    config can be readable and a spec in Git never carries it. ``url`` names
    the only origin (scheme, host, port) the credentials are ever sent to: a
    spec pointing the channel elsewhere gets no credentials.
    """

    url: str
    user: str | None = None
    password_file: str | None = Field(default=None, alias="passwordFile")
    token_file: str | None = Field(default=None, alias="tokenFile")

    @model_validator(mode="after")
    def _one_kind(self) -> CredentialsConfig:
        if (self.password_file is None) == (self.token_file is None):
            raise ValueError("name exactly one of passwordFile (with user) or tokenFile")
        if self.password_file is not None and not self.user:
            raise ValueError("passwordFile needs a user")
        if self.token_file is not None and self.user is not None:
            raise ValueError("user goes with passwordFile, not with tokenFile")
        if channel_origin(self.url) is None:
            raise ValueError(f"url must be http(s)://host[:port][/path], got {self.url[:80]!r}")
        return self


class ChannelConfig(_Model):
    """The channel this device follows: its signed name and how to authenticate."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = "stable"
    credentials: CredentialsConfig | None = None


class AuditConfig(_Model):
    """How much of the audit trail is kept (``docs/audit.md``, Retention)."""

    keep_days: Annotated[int, Field(ge=1, le=36500)] | None = Field(default=400,
                                                                   alias="keepDays")
    keep_mib: Annotated[int, Field(ge=16, le=1 << 20)] | None = Field(default=256,
                                                                     alias="keepMiB")


#: A container or volume name as the engine accepts it.
_ENGINE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
#: An image repository without tag or digest: ``registry[:port]/path`` (lowercase path).
_REPOSITORY = r"^(?:[A-Za-z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:[._/-][a-z0-9]+)*$"
#: A published port: ``[IP:]HOST:CONTAINER`` (``/tcp`` or ``/udp`` optional).
_PORT = r"^(?:[0-9.]+:)?[0-9]{1,5}:[0-9]{1,5}(?:/(?:tcp|udp))?$"
_CAPABILITY = r"^(?:ALL|[A-Z][A-Z_]{1,31})$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class CapabilitiesConfig(_Model):
    """Linux capabilities added to and dropped from the engine's default set."""

    add: list[Annotated[str, Field(pattern=_CAPABILITY)]] = Field(default_factory=list)
    drop: list[Annotated[str, Field(pattern=_CAPABILITY)]] = Field(default_factory=list)


class ContainerConfig(_Model):
    """How the product runs on a container engine (``runtime: docker``,
    ``docs/containers.md``): what ``docker run`` would be told, as data.

    Secrets (``KRUXOS_VAULT_PASSPHRASE``) are never written here: ``secretsFile``
    names a file of ``NAME=VALUE`` lines, mode 0600, read when a container is made.
    """

    engine: str = "unix:///run/docker.sock"
    name: Annotated[str, Field(pattern=_ENGINE_NAME)] = "kruxos"
    repository: Annotated[str, Field(pattern=_REPOSITORY, max_length=255)]
    volumes: dict[Annotated[str, Field(pattern=_ENGINE_NAME)],
                  Annotated[str, Field(pattern=r"^/")]] = Field(default_factory=dict)
    network: Literal["host", "bridge"] = "bridge"
    ports: list[Annotated[str, Field(pattern=_PORT)]] = Field(default_factory=list)
    environment: dict[Annotated[str, Field(pattern=_ENV_NAME)], str] = \
        Field(default_factory=dict)
    secrets_file: str | None = Field(default=None, alias="secretsFile")
    privileged: bool = False
    capabilities: CapabilitiesConfig | None = None
    security_opt: list[str] = Field(default_factory=list, alias="securityOpt")
    stop_timeout: Annotated[int, Field(ge=1, le=600)] = Field(default=10, alias="stopTimeout")

    @model_validator(mode="after")
    def _consistent(self) -> ContainerConfig:
        if self.privileged and self.capabilities is not None:
            raise ValueError("privileged: true and capabilities exclude each other (name one)")
        if self.network == "host" and self.ports:
            raise ValueError("ports: published ports do not apply with network: host")
        if not self.engine.startswith("unix:///"):
            raise ValueError(f"engine: expected unix:///PATH of the engine socket, got "
                             f"{self.engine[:80]!r}")
        return self


class DeviceConfig(_Model):
    """The device config file's fields (paths still as written)."""

    slots: dict[SlotName, SlotConfig] = Field(default_factory=dict)
    runtime: Literal["slots", "docker"] = "slots"
    container: ContainerConfig | None = None
    bootloader: BootloaderConfig = Field(default_factory=BootloaderConfig)
    trusted_keys: list[str] = Field(alias="trustedKeys", min_length=1)
    revoked_keys: list[str] = Field(default_factory=list, alias="revokedKeys")
    data_dir: str = Field(default="/data/kruxos", alias="dataDir")
    overlay: str | None = None  # by default DATA_DIR/device.yaml (see _overlay_path)
    device_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")] | None = \
        Field(default=None, alias="deviceId")
    spec: str = "/data/kruxos/spec/update.yaml"
    reboot_command: list[str] = Field(default=["systemctl", "reboot"], alias="rebootCommand",
                                      min_length=1)
    services_dir: str = Field(default="/var/lib/kruxos/services", alias="servicesDir")
    service_data_dir: str = Field(default="/var/lib/kruxos/service-data",
                                  alias="serviceDataDir")
    restart_command: list[str] = Field(default=["systemctl", "restart"], alias="restartCommand",
                                       min_length=1)
    cmdline: str = "/proc/cmdline"
    boot_id: str = Field(default="/proc/sys/kernel/random/boot_id", alias="bootId")
    machine_id: str = Field(default="/etc/machine-id", alias="machineId")
    trial_tries: Annotated[int, Field(ge=1, le=9)] = Field(default=3, alias="trialTries")
    resync: Duration = timedelta(minutes=5)
    port_map: str | None = Field(default=None, alias="portMap")
    channel: ChannelConfig = Field(default_factory=ChannelConfig)
    group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,31}$")] | None = None
    audit: AuditConfig = Field(default_factory=AuditConfig)
    fleet_lock: FleetLockConfig = Field(default_factory=FleetLockConfig, alias="fleetLock")

    @model_validator(mode="after")
    def _runtime(self) -> DeviceConfig:
        if self.runtime == "docker" and self.container is None:
            raise ValueError("runtime: docker needs a container section (engine, name, "
                             "repository, ...)")
        if self.runtime == "slots" and self.container is not None:
            raise ValueError("container: applies only with runtime: docker")
        return self


@dataclass(frozen=True)
class ChannelCredentials:
    """The channel credentials with resolved paths; the secret is read when used."""

    origin: str
    user: str | None
    password_file: Path | None
    token_file: Path | None

    @property
    def secret_file(self) -> Path:
        """The file holding the password or the token."""
        found = self.password_file or self.token_file
        assert found is not None, "validated: one of the two is set"
        return found


def rollout_id(device: Device) -> str | None:
    """The id a phased rollout hashes into this device's place (``docs/rollout.md``): the
    device layer's ``deviceId`` if set, else the first line of the machine id file
    (``machineId``, ``/etc/machine-id``); ``None`` when neither gives one."""
    if device.device_id:
        return device.device_id
    try:
        with device.machine_id.open("rb") as handle:
            text = handle.read(256).decode("ascii", "replace")
    except OSError:
        return None
    first = text.splitlines()[0].strip() if text.strip() else ""
    return first or None


def channel_origin(url: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL (default port filled in); ``None`` if not one.

    Parsed by :func:`reconciler.urls.parse_url`, the parser of every URL the
    device fetches, so where credentials may go and where a request goes are
    decided by the same reading of the URL.
    """
    try:
        parsed = parse_url(url)
    except UrlError:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{parsed.scheme}://{replace(parsed, port=port).netloc}"


@dataclass(frozen=True)
class Device:
    """The device config with every path resolved, as the rest of the code uses it."""

    source: Path
    slot_paths: dict[SlotName, Path]
    bootloader: str
    boot_env: Path
    trusted_keys: tuple[Path, ...]
    revoked_keys: tuple[Path | str, ...]
    data_dir: Path
    spec_path: Path
    reboot_command: tuple[str, ...]
    cmdline: Path
    boot_id: Path
    trial_tries: int
    resync: timedelta
    port_map: Path | None
    channel_name: str = "stable"
    credentials: ChannelCredentials | None = None
    group: str | None = None
    audit_keep_days: int | None = 400
    audit_keep_bytes: int | None = 256 * 1024 * 1024
    device_id: str | None = None
    #: The files the config was read from: the image layer, then the device layer if any.
    layers: tuple[Path, ...] = ()
    #: The service store: the updater's own directory, never inside the data dir.
    services_dir: Path = Path("/var/lib/kruxos/services")
    #: The services' own data, each in the directory its artifact declares (``data_dir``):
    #: on the store's filesystem (a restore renames a copy back), never inside the data dir.
    service_data_dir: Path = Path("/var/lib/kruxos/service-data")
    #: Restarts one service; the service's name is appended (``systemctl restart gateway``).
    restart_command: tuple[str, ...] = ("systemctl", "restart")
    #: ``slots`` (A/B slots and a bootloader) or ``docker`` (a container engine, no slots).
    runtime: str = "slots"
    container: ContainerConfig | None = None
    #: The container's secrets (``NAME=VALUE`` lines, mode 0600), resolved.
    container_secrets: Path | None = None
    #: The OS's machine id: the device's id in a phased rollout when ``deviceId`` is unset.
    machine_id: Path = Path("/etc/machine-id")
    #: This device's group of reboot slots on the spec's FleetLock server, and the file
    #: holding its bearer token (if the server wants one).
    fleet_group: str = "default"
    fleet_token_file: Path | None = None

    def slot_device(self, slot: SlotName) -> str:
        """``sda3``: the short device name status lines show."""
        return self.slot_paths[slot].name

    @property
    def audit_dir(self) -> Path:
        """Where the audit trail lives on the data dir."""
        return self.data_dir / "audit"

    def booted_slot(self) -> SlotName:
        """The running slot, from the kernel command line (``kruxos.slot=B``)."""
        try:
            text = self.cmdline.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the kernel command line {self.cmdline}: "
                              f"{exc.strerror}") from exc
        match = re.search(r"(?:^|\s)kruxos\.slot=([AB])(?:\s|$)", text)
        if match is None:
            raise ConfigError(f"{self.cmdline}: no kruxos.slot=A|B on the kernel command line")
        return "A" if match.group(1) == "A" else "B"

    def current_boot_id(self) -> str:
        """An id that changes on every boot (so a health check restarts per boot)."""
        try:
            return self.boot_id.read_text().strip()
        except OSError:
            return "unknown"

    def map_url(self, url: str) -> str:
        """Rewrite a loopback URL through the port map (simulated devices only).

        A simulated device shares the host's loopback with other devices, so its
        own ``127.0.0.1:7800`` is mapped onto a free host port picked at run
        time, as a network namespace would. Real devices have no port map.
        Every URL the runtime fetches passes here, so it is parsed by the same
        function that validated the spec (:func:`reconciler.urls.parse_url`).
        """
        parsed = parse_url(url)
        if self.port_map is None:
            return url
        try:
            mapping = json.loads(self.port_map.read_text())
        except (OSError, ValueError):
            return url
        target = mapping.get(parsed.netloc) if isinstance(mapping, dict) else None
        return parsed.with_netloc(target).text() if isinstance(target, str) else url


def config_path(explicit: str | None) -> Path:
    """``--config``, else ``$KRUXOS_CONFIG``, else the system default."""
    chosen = explicit or os.environ.get("KRUXOS_CONFIG")
    return Path(chosen) if chosen else DEFAULT_PATH


def load_device(path: Path) -> Device:
    """Read the image layer at ``path`` and the device layer it names; resolve both."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    layers = [path.resolve()]
    overlay_path = _overlay_path(raw, path)
    if overlay_path is not None and overlay_path.exists():
        overlay = _read_yaml(overlay_path)
        if overlay is not None:
            raw = _merge(raw, overlay, overlay_path, path)
            layers.append(overlay_path.resolve())
    try:
        cfg = DeviceConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{_layer_of(first['loc'], layers)}: {where}: {first['msg']}") from None
    missing = [s for s in SLOTS if s not in cfg.slots]
    if missing and cfg.runtime == "slots":
        raise ConfigError(f"{path}: slots: slot {missing[0]} is not configured")
    device = replace(_resolve(cfg, path.resolve(), overlay_path), layers=tuple(layers))
    set_data_policy(device.data_dir, _group_id(device.group, path))
    _register_secrets(device.credentials)
    _check_container_secrets(device, layers)
    return device


def read_secrets_file(path: Path) -> dict[str, str]:
    """The ``NAME=VALUE`` lines of a container's secrets file (blank lines and ``#``
    comments skipped); a line of another form is an error naming its number, never its
    content."""
    found = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, value = text.partition("=")
        if not sep or not re.match(_ENV_NAME, name):
            raise ConfigError(f"{path}: line {number}: expected NAME=VALUE")
        found[name] = value
    return found


def _check_container_secrets(device: Device, layers: list[Path]) -> None:
    """The secrets file must be 0600 (or stricter) and well formed; its values are masked
    in every output of this process from now on."""
    path = device.container_secrets
    if path is None:
        return
    where = layers[-1] if len(layers) > 1 else layers[0]
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"{where}: container.secretsFile: cannot read {path}: "
                          f"{exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"{where}: container.secretsFile: {path} is mode {mode:04o}; it "
                          "holds secrets, so it must be 0600 (chmod 600)")
    try:
        values = read_secrets_file(path)
    except OSError as exc:
        raise ConfigError(f"{where}: container.secretsFile: cannot read {path}: "
                          f"{exc.strerror}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: container.secretsFile: {exc}") from None
    for value in values.values():
        register_secret(value)


def _overlay_path(raw: dict[str, Any], path: Path) -> Path | None:
    """The device layer's file: ``overlay``, by default ``device.yaml`` in the data dir;
    ``overlay: null`` for none."""
    if "overlay" not in raw:
        data_dir = raw.get("dataDir", "/data/kruxos")
        if not isinstance(data_dir, str):
            return None  # the model names the error
        value = str(Path(data_dir) / "device.yaml")
    else:
        value = raw["overlay"]
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: overlay: expected a path to the device layer (or null)")
    return Path(value) if os.path.isabs(value) else path.resolve().parent / value


def _merge(image: dict[str, Any], overlay: Any, overlay_path: Path,
           image_path: Path) -> dict[str, Any]:
    """The image layer with the device layer's keys on top; a key the device layer may
    not set is refused, naming it and the layer that owns it."""
    if not isinstance(overlay, dict):
        raise ConfigError(f"{overlay_path}: expected a mapping of settings")
    merged = dict(image)
    for key, value in overlay.items():
        if key not in OVERLAY_KEYS:
            owner = "trust comes from the image" if key in ("trustedKeys", "overlay") else \
                "it is a fact of the image"
            raise ConfigError(
                f"{overlay_path}: {str(key)[:40]}: cannot be set in the device layer; only "
                f"{image_path} (the image) sets it: {owner} (the device layer may set "
                f"{', '.join(sorted(OVERLAY_KEYS))})")
        if key == "revokedKeys":
            if not isinstance(value, list):
                raise ConfigError(f"{overlay_path}: revokedKeys: expected a list")
            merged[key] = [*image.get(key, []), *(_relative_to(v, overlay_path, image_path)
                                                  for v in value)]
        elif key == "channel" and isinstance(value, dict) and isinstance(image.get(key), dict):
            merged[key] = {**image[key], **value}
        else:
            merged[key] = value
    return _paths_from(merged, overlay, overlay_path, image_path)


def _relative_to(value: Any, overlay_path: Path, image_path: Path) -> Any:
    """A path the device layer names, made absolute from where that layer lives."""
    if not isinstance(value, str) or os.path.isabs(value) or _KEYID.match(value):
        return value
    return str(overlay_path.resolve().parent / value)


def _paths_from(merged: dict[str, Any], overlay: dict[str, Any], overlay_path: Path,
                image_path: Path) -> dict[str, Any]:
    """Relative paths of the device layer are relative to its own file."""
    for key in ("spec", "portMap"):
        if key in overlay:
            merged[key] = _relative_to(overlay[key], overlay_path, image_path)
    container = overlay.get("container")
    if isinstance(container, dict) and "secretsFile" in container:
        merged["container"] = {**container, "secretsFile": _relative_to(
            container["secretsFile"], overlay_path, image_path)}
    creds = (overlay.get("channel") or {}).get("credentials") \
        if isinstance(overlay.get("channel"), dict) else None
    if isinstance(creds, dict):
        merged["channel"] = {**merged["channel"], "credentials": {
            k: _relative_to(v, overlay_path, image_path) if k.endswith("File") else v
            for k, v in creds.items()}}
    return merged


def _layer_of(loc: tuple[Any, ...], layers: list[Path]) -> Path:
    """The file an invalid setting came from (the device layer for its own keys)."""
    if len(layers) > 1 and loc and loc[0] in OVERLAY_KEYS:
        return layers[1]
    return layers[0]


def _group_id(name: str | None, path: Path) -> int | None:
    """The gid of the data dir's group; an unknown group is a config error."""
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"{path}: group: no group named {name!r} on this system") from None


def _register_secrets(credentials: ChannelCredentials | None) -> None:
    """Mask the channel secret in every output of this process, even before it is used."""
    if credentials is None:
        return
    with contextlib.suppress(OSError, UnicodeDecodeError):
        secret = credentials.secret_file.read_text().strip()
        register_secret(secret)
        if credentials.user is not None:  # as it travels in an Authorization header
            pair = f"{credentials.user}:{secret}".encode()
            register_secret(base64.b64encode(pair).decode())


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the device config {path}: {exc.strerror} "
                          "(use --config FILE or set KRUXOS_CONFIG)") from exc
    try:
        return YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from None


def _resolve(cfg: DeviceConfig, source: Path, overlay: Path | None = None) -> Device:
    base = source.parent

    def at(value: str) -> Path:
        return (base / value) if not os.path.isabs(value) else Path(value)

    return Device(
        source=source,
        slot_paths={name: at(slot.device) for name, slot in cfg.slots.items()},
        bootloader=cfg.bootloader.backend,
        boot_env=at(cfg.bootloader.env),
        trusted_keys=tuple(at(k) for k in cfg.trusted_keys),
        revoked_keys=tuple(k if _KEYID.match(k) else at(k) for k in cfg.revoked_keys),
        data_dir=at(cfg.data_dir),
        spec_path=at(cfg.spec),
        reboot_command=tuple(cfg.reboot_command),
        services_dir=at(cfg.services_dir),
        service_data_dir=at(cfg.service_data_dir),
        restart_command=tuple(cfg.restart_command),
        cmdline=at(cfg.cmdline),
        boot_id=at(cfg.boot_id),
        machine_id=at(cfg.machine_id),
        trial_tries=cfg.trial_tries,
        resync=cfg.resync,
        port_map=at(cfg.port_map) if cfg.port_map else None,
        channel_name=cfg.channel.name,
        credentials=_credentials(cfg.channel.credentials, at),
        group=cfg.group,
        device_id=cfg.device_id,
        audit_keep_days=cfg.audit.keep_days,
        audit_keep_bytes=cfg.audit.keep_mib * 1024 * 1024 if cfg.audit.keep_mib else None,
        runtime=cfg.runtime,
        container=cfg.container,
        container_secrets=at(cfg.container.secrets_file)
        if cfg.container and cfg.container.secrets_file else None,
        fleet_group=cfg.fleet_lock.group,
        fleet_token_file=at(cfg.fleet_lock.token_file) if cfg.fleet_lock.token_file else None,
    )


def _credentials(cfg: CredentialsConfig | None,
                 at: Callable[[str], Path]) -> ChannelCredentials | None:
    if cfg is None:
        return None
    origin = channel_origin(cfg.url)
    assert origin is not None, "validated by CredentialsConfig"
    return ChannelCredentials(origin, cfg.user,
                              at(cfg.password_file) if cfg.password_file else None,
                              at(cfg.token_file) if cfg.token_file else None)
