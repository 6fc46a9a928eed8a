"""``kruxos sim init DIR --runtime docker``: a container device for a person to try.

It writes the two config layers of a ``runtime: docker`` device (no slots, no
bootloader), its secrets file (mode 0600, a fresh vault passphrase), a signing
key, an empty signed channel and a spec. What it cannot make for the person is
the engine, the registry and the images; the lines it prints are the commands
that publish an image by digest as a container-only release, serve the channel
and start the daemon (``docs/containers.md``), each one to copy as it is.
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
resync: {resync}s
"""

#: How often the try-out device looks at its channel (a second release is taken within it).
RESYNC_S = 10

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
    name = "kruxos"
    secret_file = directory / "container.env"
    atomic_write(secret_file, f"KRUXOS_VAULT_PASSPHRASE={secrets.token_urlsafe(24)}\n"
                 .encode(), mode=0o600)
    (directory / "device.yaml").write_text(DEVICE.format(resync=RESYNC_S))
    atomic_write(directory / "data" / "device.yaml", LAYER.format(
        device_id=_device_id(directory), engine=engine, name=name,
        repository=f"{registry}/kruxos", port=port).encode())
    (directory / "spec.yaml").write_text(SPEC.format(channel=channel, port=port))
    return directory / "device.yaml"


#: What the person's own image is called in the printed commands.
YOUR_IMAGE = "YOUR-IMAGE"


def next_steps(config: Path, registry: str, channel: str, port: int = 7800) -> list[str]:
    """What the person does next: a line of prose per step, then its commands, each
    indented after ``$ `` and runnable as it is (``YOUR-IMAGE`` is theirs to name)."""
    directory, repository = config.parent, f"{registry}/kruxos"
    chan = directory / "channel"
    host, _, listen = channel.rpartition(":")
    digest = (f"\"$(docker inspect --format '{{{{range .RepoDigests}}}}{{{{println .}}}}"
              f"{{{{end}}}}' {repository}:1.0.0 | grep -m1 '^{repository}@')\"")
    return [
        f"container device created in {directory} (runtime: docker, no slots)",
        f"  $ export KRUXOS_CONFIG={config}",
        f"1. push an image to the registry; on the host network, with KRUXOS_PORT={port} in "
        f"its environment, it must answer http://127.0.0.1:{port}/health/ready:",
        f"  $ docker tag {YOUR_IMAGE} {repository}:1.0.0",
        f"  $ docker push {repository}:1.0.0",
        "2. list it by its digest as a container-only release, and sign the channel:",
        f"  $ kruxos release add {chan} --version 1.0.0 --changes 'first' "
        f"--container-image {digest}",
        f"  $ kruxos release sign {chan} --key {directory / 'keys' / 'release.key'}",
        "3. serve the channel, in a second terminal:",
        f"  $ python3 -m http.server --bind {host} --directory {chan} {listen}",
        "4. start the daemon, in a third terminal with KRUXOS_CONFIG exported as above; it "
        "pulls 1.0.0 by its digest, starts the container and probes it:",
        "  $ kruxos daemon",
        "5. see what runs, back in the first terminal:",
        "  $ kruxos update status",
        f"6. a second release: steps 1 and 2 with 1.0.1 in place of 1.0.0; the daemon swaps "
        f"to it within {RESYNC_S} s (docs/containers.md)",
    ]


def _device_id(directory: Path) -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in directory.name)
    return f"ctr-{name.strip('-.')[:56] or 'device'}"
