"""The service update's side effects: fetch artifacts into the service store, restart services.

The executor's service actions (:mod:`reconciler.executor`) run through this
adapter: artifacts are fetched from the channel under freshly verified
metadata and written into the store each block checked against its signed hash
(:meth:`reconciler.services.ServiceStore.stage`); a service is restarted by the
device config's ``restartCommand`` with the service's name appended
(``systemctl restart gateway`` on a real device; the simulated device asks its
simulated OS to restart just that service's process).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from reconciler.channelwatch import ChannelWatch
from reconciler.config import Device
from reconciler.errors import (
    ChannelUnavailable,
    KruxosError,
    ReleaseError,
    UrlError,
    short_error,
)
from reconciler.release.identity import read_identity
from reconciler.release.metadata import Release, ServiceArtifact
from reconciler.services import ServiceStore
from reconciler.spec import UpdatePolicy
from reconciler.urls import parse_channel_url

#: Seconds a service's restart command may take before it counts as failed.
RESTART_TIMEOUT = 60.0


class ServiceRuntime:
    """The device's service store, its channel, and its service manager, for the executor."""

    def __init__(self, device: Device, channel: ChannelWatch) -> None:
        self.device = device
        self.channel = channel
        self._store: ServiceStore | None = None

    @property
    def store(self) -> ServiceStore:
        """The store, opened once (opening resolves what a crash left)."""
        if self._store is None:
            self._store = ServiceStore(self.device.services_dir, self.device.data_dir)
        return self._store

    def exists(self) -> bool:
        """Whether the store's directory is there (an old config may name none yet)."""
        return self._store is not None or Path(self.device.services_dir).is_dir()

    def root(self) -> tuple[str, str]:
        """The booted slot's root image SHA-256 and release, from its own identity."""
        identity, problem = read_identity(self.device.slot_paths[self.device.booted_slot()])
        if identity is None or not identity.sha256:
            raise KruxosError(f"the booted slot names no root image ({problem or 'no identity'})"
                              ": no service update")
        return identity.sha256, identity.version

    def slot_roots(self) -> set[str]:
        """The root images the two slots hold (their overlays are kept)."""
        roots = set()
        for path in self.device.slot_paths.values():
            try:
                identity, _ = read_identity(path)
            except OSError:
                continue
            if identity is not None and identity.sha256:
                roots.add(identity.sha256)
        return roots

    def release(self, policy: UpdatePolicy, version: str) -> Release:
        """``version`` under freshly verified metadata (refused if the device cannot)."""
        return self.channel.release(policy, version)

    def stage(self, policy: UpdatePolicy, release: Release, names: tuple[str, ...]) -> str:
        """Fetch the artifacts of ``names`` in ``release`` into the store, block by block."""
        base = self.device.map_url(policy.spec.channel.url)
        done = []
        for artifact in release.services:
            if artifact.name not in names:
                continue
            if self.store.has(artifact.sha256):
                done.append(f"{artifact.name} {artifact.version} (already in the store)")
                continue
            self._fetch(base, artifact)
            done.append(f"{artifact.name} {artifact.version} ({artifact.size} bytes verified)")
        return ", ".join(done) if done else "no artifact to fetch"

    def _fetch(self, base: str, artifact: ServiceArtifact) -> None:
        try:
            url = parse_channel_url(base).join(artifact.file)
        except UrlError as exc:
            raise ReleaseError(f"channel: cannot fetch service {artifact.name}: {exc}") from exc
        try:
            with httpx.Client(transport=self.channel.transport, timeout=30.0,
                              trust_env=False) as client:
                with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise ChannelUnavailable(f"service {artifact.name} {artifact.version}:"
                                                 f" the channel answered "
                                                 f"{response.status_code}", 30.0)
                    self.store.stage(artifact, _reader(response.iter_bytes()))
        except httpx.HTTPError as exc:
            raise ChannelUnavailable(f"service {artifact.name} {artifact.version}: "
                                     f"{short_error(exc)}", 30.0) from exc

    def data_path(self, data_dir: str) -> Path:
        """A service's data directory under the service data root; refused inside the data
        dir (updates never touch it) or outside the root."""
        root = Path(os.path.abspath(self.device.service_data_dir))
        data = Path(os.path.abspath(self.device.data_dir))
        if root.is_relative_to(data) or data.is_relative_to(root):
            raise KruxosError(f"the service data root {root} overlaps the data dir {data}, "
                              "which updates never touch: no service data is copied")
        path = Path(os.path.normpath(root / data_dir))
        if not path.is_relative_to(root) or path == root:
            raise KruxosError(f"service data {data_dir[:40]!r} is not under {root}")
        return path

    def copy_data(self, name: str, version: str, data_dir: str) -> str:
        """Copy the service's data as it is while ``version`` runs (before the switch)."""
        self.store.copies.copy(name, version, self.data_path(data_dir))
        return f"{name}'s data ({data_dir}) copied"

    def put_back_data(self, name: str, version: str, data_dir: str) -> str:
        """Put the copy of the service's data from ``version`` back (before its restart)."""
        if self.store.copies.put_back(name, version, self.data_path(data_dir)):
            return f"{name}'s data ({data_dir}) put back as it was under {version}"
        return f"{name}'s data ({data_dir}): no copy from {version} left (already put back)"

    def restart(self, names: tuple[str, ...]) -> str:
        """Restart each service by the device's restart command; fails at the first that
        does not restart (its output quoted).

        The store is opened first: a crash between a record and its ``current`` link is
        resolved (the link made to agree) before a service starts from the link, so what
        runs, and is then probed, is what the record says (the crash matrix found a restart
        from a stale link: the old service probed and the new one confirmed unrun)."""
        _ = self.store
        for name in names:
            result = subprocess.run([*self.device.restart_command, name], capture_output=True,
                                    text=True, timeout=RESTART_TIMEOUT, check=False)
            if result.returncode != 0:
                said = (result.stderr or result.stdout).strip()[:160]
                raise KruxosError(f"restarting {name} failed ({result.returncode}): {said}")
        return ", ".join(f"{name} restarted" for name in names)


def _reader(chunks: Iterator[bytes]) -> ServiceReader:
    return ServiceReader(chunks)


class ServiceReader:
    """``read(n)`` over a response's chunks (the store reads blocks of its own size)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buffer += chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out
