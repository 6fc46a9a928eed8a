"""The channel as the reconciler sees it: verified metadata, fetched when needed.

Metadata is fetched when the spec changes (a new channel URL or version), when
the last fetch is older than the resync period, and again after a failure once
its retry delay has passed. Only verified metadata is ever used; the highest
serial and the newest trusted time seen are kept on disk (metadata rollback
and freeze protection survive reboots).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import httpx

from reconciler.config import Device
from reconciler.errors import KruxosError, ReleaseError, TemporaryError
from reconciler.observed import ChannelView
from reconciler.release.client import ChannelTrust, fetch_metadata
from reconciler.release.keys import load_revoked, load_trusted_keys
from reconciler.release.metadata import ChannelMetadata, Release
from reconciler.spec import UpdatePolicy
from reconciler.store import StateStore

TRUST_FILE = "channel-trust.json"


def view_of(meta: ChannelMetadata, error: str | None = None,
            retry: timedelta = timedelta(seconds=30)) -> ChannelView:
    """The channel as ``decide`` sees it, from verified metadata."""
    latest = meta.latest()
    return ChannelView(versions=frozenset(r.version for r in meta.releases),
                       latest=latest.version if latest else None, error=error,
                       retry_after=retry)


class ChannelWatch:
    """Fetches and verifies channel metadata, caching the last verified copy."""

    def __init__(self, device: Device, store: StateStore,
                 clock: Callable[[], datetime], *, save_trust: bool = True) -> None:
        self.device = device
        self.save_trust = save_trust
        self.store = store
        self.clock = clock
        self.trust_path = device.data_dir / TRUST_FILE
        self._meta: ChannelMetadata | None = None
        self._error: str | None = None
        self._key: tuple[str, str] | None = None
        self._next: datetime | None = None
        self._retry = timedelta(seconds=30)
        self._transport: httpx.HTTPTransport | None = None

    @property
    def transport(self) -> httpx.HTTPTransport:
        """One connection pool for the metadata and the images (one TLS context, built once).

        Each request's client closes the pool's connections when it ends; the
        pool itself, and its TLS context, stay for the next request.
        """
        if self._transport is None:
            self._transport = httpx.HTTPTransport()
        return self._transport

    def view(self, policy: UpdatePolicy, revision: str, now: datetime) -> ChannelView:
        """The channel as ``decide`` needs it, refetched when stale."""
        key = (policy.spec.channel.url, revision)
        if key != self._key or self._next is None or now >= self._next:
            self.refresh(policy, now)
            self._key = key
        if self._meta is None:
            return ChannelView(error=self._error or "no metadata", retry_after=self._retry)
        return view_of(self._meta, self._error, self._retry)

    def refresh(self, policy: UpdatePolicy, now: datetime) -> ChannelMetadata | None:
        """Fetch and verify now; on failure keep no stale trust, remember the error."""
        try:
            self._meta = self.fetch(policy.spec.channel.url, now)
            self._error = None
            self._next = now + self.device.resync
        except TemporaryError as exc:
            self._error, self._retry = str(exc), timedelta(seconds=exc.delay)
            self._next = now + self._retry
        except KruxosError as exc:
            self._meta, self._error = None, f"channel refused: {exc}"
            self._retry = timedelta(seconds=60)
            self._next = now + self._retry
        return self._meta

    def fetch(self, url: str, now: datetime) -> ChannelMetadata:
        """Download and verify metadata against the device's keys and stored trust."""
        trust = ChannelTrust.load(self.trust_path)
        trusted = load_trusted_keys(self.device.trusted_keys)
        revoked = load_revoked(self.device.revoked_keys)
        meta = fetch_metadata(self.device.map_url(url), trusted, revoked, now, None,
                              trust.trusted_time, transport=self.transport)
        floor = trust.min_serial(meta.channel)
        if floor is not None and meta.serial < floor:
            raise ReleaseError(f"metadata serial {meta.serial} is lower than {floor}, the "
                               f"highest seen on channel {meta.channel!r} (metadata rollback)")
        if self.save_trust:
            trust.advanced(meta).save(self.trust_path)
        return meta

    def release(self, policy: UpdatePolicy, version: str) -> Release:
        """Freshly verified metadata for ``version``, right before staging it."""
        meta = self.fetch(policy.spec.channel.url, self.clock())
        self._meta, self._error = meta, None
        found = meta.find(version)
        if found is None:
            raise ReleaseError(f"{version} is not published on channel {meta.channel!r}")
        return found
