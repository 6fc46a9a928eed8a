"""``kruxos sim init DIR --runtime docker``: a container device for a person to try.

It writes the two config layers of a ``runtime: docker`` device (no slots, no
bootloader), its secrets file (mode 0600, a fresh vault passphrase), a signing
key, an empty signed channel and a spec. What it cannot make for the person is
the engine, the registry and the images; the last lines it prints say how to
publish an image by digest and start the daemon (``docs/containers.md``).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from reconciler.durable import atomic_write
from reconciler.errors import ConfigError
from reconciler.release.channel import init_channel, sign_channel
from reconciler.release.keys import generate_keypair

DEVICE = """\
# The image layer of this container device (a real one: /etc/kruxos/device.yaml).
# No slots and no bootloader: the device layer (data/device.yaml) says runtime: docker.
trustedKeys: [keys/release.pub]
dataDir: data
spec: spec.yaml
resync: 30s
"""

LAYER = """\
# This device's own settings: it runs the product as a container (docs/containers.md).
deviceId: {device_id}
runtime: docker
container:
  engine: {engine}
  name: {name}
  repository: {repository}
  volumes: {{{name}-data: /data/kruxos}}
  network: host
  environment: {{KRUXOS_PORT: "{port}"}}
  secretsFile: ../container.env       # KRUXOS_VAULT_PASSPHRASE, mode 0600
  # privileged: true                  # where the engine may grant every capability
  capabilities: {{add: [ALL], drop: [SYS_RESOURCE]}}
  stopTimeout: 10
"""

SPEC = """\
# Desired state of this container device. Edit `version` and the daemon follows.
apiVersion: kruxos.io/v1
kind: UpdatePolicy
metadata:
  name: container-device
spec:
  version: latest
  channel:
    url: http://{channel}/
  health:
    url: http://127.0.0.1:{port}/health/ready
    interval: 1s
    timeout: 30s
"""


def init_container_device(directory: Path, *, engine: str, registry: str,
                          channel: str, port: int = 7800) -> Path:
    """Create the device's files in ``directory`` (new or empty); its image layer's path."""
    directory = directory.resolve()
    if directory.is_dir() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty: a container device is made in a new or "
                          "empty directory")
    for sub in ("keys", "channel", "data"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    generate_keypair(directory / "keys", "release")
    init_channel(directory / "channel", "stable")
    sign_channel(directory / "channel", [directory / "keys" / "release.key"])
    (directory / "root.img").write_bytes(b"\0" * 4096)  # the release's root image field
    name = "kruxos"
    secret_file = directory / "container.env"
    atomic_write(secret_file, f"KRUXOS_VAULT_PASSPHRASE={secrets.token_urlsafe(24)}\n"
                 .encode(), mode=0o600)
    (directory / "device.yaml").write_text(DEVICE)
    atomic_write(directory / "data" / "device.yaml", LAYER.format(
        device_id=_device_id(directory), engine=engine, name=name,
        repository=f"{registry}/kruxos", port=port).encode())
    (directory / "spec.yaml").write_text(SPEC.format(channel=channel, port=port))
    return directory / "device.yaml"


def next_steps(config: Path, registry: str, channel: str) -> list[str]:
    """What the person does next, one line each."""
    directory = config.parent
    return [
        f"container device created in {directory} (runtime: docker, no slots)",
        f"export KRUXOS_CONFIG={config}",
        f"1. push an image: docker push {registry}/kruxos:1.0.0 (note its sha256 digest)",
        f"2. kruxos release add {directory / 'channel'} {directory / 'root.img'} --version "
        f"1.0.0 --changes 'first' --container-image {registry}/kruxos@sha256:<digest>",
        f"3. kruxos release sign {directory / 'channel'} --key "
        f"{directory / 'keys' / 'release.key'}",
        f"4. serve the channel: python3 -m http.server --bind {channel.split(':')[0]} "
        f"--directory {directory / 'channel'} {channel.split(':')[-1]}",
        "5. kruxos daemon   (it pulls 1.0.0 by digest, starts the container, probes it)",
    ]


def _device_id(directory: Path) -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in directory.name)
    return f"ctr-{name.strip('-.')[:56] or 'device'}"
