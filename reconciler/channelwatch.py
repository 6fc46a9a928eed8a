"""The channel as the reconciler sees it: verified metadata, fetched when needed.

Metadata is fetched when the spec changes (a new channel URL or version), when
the last fetch is older than the resync period, and again after a failure once
its retry delay has passed. Only verified metadata is ever used; the highest
serial and the newest trusted time seen are kept on disk (metadata rollback
and freeze protection survive reboots).

The channel's *name* is pinned by the device config (``channel.name``), not by
the spec: metadata signed for another name is refused, and the serial floor is
the one of the followed name. Each distinct refused metadata file (by SHA-256)
is handed once to ``on_refused`` — the daemon records it in the audit trail —
whatever the decision of the pass, so a device that is already up to date
still says that its channel serves something it refuses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta

import httpx

from reconciler.config import Device, channel_origin
from reconciler.errors import KruxosError, ReleaseError, TemporaryError
from reconciler.observed import ChannelView
from reconciler.release.client import ChannelTrust, CredentialTransport, fetch_raw
from reconciler.release.keys import load_revoked, load_trusted_keys
from reconciler.release.metadata import ChannelMetadata, Release, verify_metadata
from reconciler.spec import UpdatePolicy
from reconciler.store import StateStore

TRUST_FILE = "channel-trust.json"

#: Called with the SHA-256 of a refused metadata file and the reason, once per file.
RefusalSink = Callable[[str, str], None]


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
                 clock: Callable[[], datetime], *, save_trust: bool = True,
                 on_refused: RefusalSink | None = None) -> None:
        self.device = device
        self.save_trust = save_trust
        self.on_refused = on_refused
        self.store = store
        self.clock = clock
        self.trust_path = device.data_dir / TRUST_FILE
        self._meta: ChannelMetadata | None = None
        self._error: str | None = None
        self._key: tuple[str, str] | None = None
        self._next: datetime | None = None
        self._retry = timedelta(seconds=30)
        self._transport: httpx.BaseTransport | None = None

    @property
    def transport(self) -> httpx.BaseTransport:
        """One connection pool for the metadata and the images (one TLS context, built once).

        Each request's client closes the pool's connections when it ends; the
        pool itself, and its TLS context, stay for the next request. The
        device's channel credentials, if any, are added here for their origin.
        """
        if self._transport is None:
            pool = httpx.HTTPTransport()
            creds = self.device.credentials
            self._transport = pool if creds is None else CredentialTransport(
                pool, creds, lambda: channel_origin(self.device.map_url(creds.origin)))
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
        """Download and verify metadata against the device's keys, pin and stored trust."""
        trust = ChannelTrust.load(self.trust_path)
        trusted = load_trusted_keys(self.device.trusted_keys)
        revoked = load_revoked(self.device.revoked_keys)
        name = self.device.channel_name
        raw = fetch_raw(self.device.map_url(url), transport=self.transport)
        try:
            meta = verify_metadata(raw, trusted, revoked, now, trust.min_serial(name),
                                   trust.trusted_time, channel=name)
        except ReleaseError as exc:
            self._refused(trust, hashlib.sha256(raw).hexdigest(), str(exc))
            raise
        if self.save_trust:
            trust.advanced(meta).save(self.trust_path)
        return meta

    def _refused(self, trust: ChannelTrust, digest: str, reason: str) -> None:
        """Hand a refused file to ``on_refused`` unless it was recorded before."""
        if self.on_refused is None or digest in trust.refused:
            return
        self.on_refused(digest, reason)
        trust.with_refused(digest).save(self.trust_path)

    def release(self, policy: UpdatePolicy, version: str) -> Release:
        """Freshly verified metadata for ``version``, right before staging it."""
        meta = self.fetch(policy.spec.channel.url, self.clock())
        self._meta, self._error = meta, None
        found = meta.find(version)
        if found is None:
            raise ReleaseError(f"{version} is not published on channel {meta.channel!r}")
        return found
