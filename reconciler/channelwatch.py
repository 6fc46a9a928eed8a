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
still says that its channel serves something it refuses. Accepted metadata
may still list releases this device cannot install (they require a feature it
does not implement, :mod:`reconciler.release.features`): the rest of the
channel stays usable, and each distinct set of such releases is handed once to
``on_refused`` too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import httpx

from reconciler.config import Device, channel_origin, rollout_id
from reconciler.errors import KruxosError, ReleaseError, TemporaryError
from reconciler.observed import ChannelView
from reconciler.release.client import ChannelTrust, CredentialTransport, fetch_raw
from reconciler.release.features import (
    held_back,
    missing,
    newest_installable,
    refusal_reason,
    why_not,
)
from reconciler.release.keys import load_revoked, load_trusted_keys
from reconciler.release.metadata import ChannelMetadata, Release, semver_key, verify_metadata
from reconciler.release.rollout import wariness_of
from reconciler.spec import UpdatePolicy
from reconciler.store import StateStore

TRUST_FILE = "channel-trust.json"
#: Refused releases listed in a ``release-refused`` record's details (all are counted).
LISTED_REFUSALS = 16


@dataclass(frozen=True)
class Refusal:
    """Something the channel serves that this device refuses, to be recorded once.

    ``action`` is the audit record's action: ``channel-refused`` (a whole
    metadata file) or ``release-refused`` (releases of accepted metadata that
    require features this device does not implement). ``key`` tells distinct
    refusals apart (a SHA-256); ``details`` go into the record.
    """

    action: str
    key: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


#: Called once per distinct refusal (a refused file, a set of refused releases).
RefusalSink = Callable[[Refusal], None]


def view_of(meta: ChannelMetadata, error: str | None = None,
            retry: timedelta = timedelta(seconds=30), runtime: str | None = None,
            now: datetime | None = None, wariness: Fraction | None = None) -> ChannelView:
    """The channel as ``decide`` sees it, from verified metadata.

    ``latest`` is the newest release a device of ``runtime`` can install and, given
    ``now`` and its ``wariness``, whose phased rollout has reached it; the newer
    installable ones held back by their rollout are in ``held`` with when each is
    offered. The others are listed in ``refused`` (newest first) with their reason,
    and never staged: a release without a root image on a slot device, one without a
    container image on a container device, one requiring a feature not implemented.
    """
    newest_first = sorted(meta.releases, key=lambda r: semver_key(r.version), reverse=True)
    refused = {r.version: why for r in newest_first
               if (why := why_not(r, runtime=runtime)) is not None}
    latest = newest_installable(meta, runtime=runtime, now=now, wariness=wariness)
    held = [] if now is None or wariness is None else held_back(meta, now, wariness,
                                                                runtime=runtime)
    return ChannelView(versions=frozenset(r.version for r in meta.releases),
                       latest=latest.version if latest else None, error=error,
                       retry_after=retry, refused=refused,
                       components={r.version: parts for r in meta.releases
                                   if (parts := r.components()) is not None},
                       images={r.version: r.container_image for r in meta.releases
                               if r.container_image},
                       held={h.version: h.reason() for h in held},
                       held_until=min((h.offered_at for h in held if h.offered_at), default=None))


def release_refusal(meta: ChannelMetadata, runtime: str | None = None) -> Refusal | None:
    """The releases of ``meta`` a device of ``runtime`` cannot install, as one refusal
    (``None``: none).

    Keyed by the channel and each refused release's version, image digest and
    missing features: re-signing the same releases is not a new refusal, a new
    one (or a changed one) is.
    """
    refused = sorted(((r, why) for r in meta.releases
                      if (why := why_not(r, runtime=runtime)) is not None),
                     key=lambda item: semver_key(item[0].version), reverse=True)
    if not refused:
        return None
    key = hashlib.sha256("\n".join([meta.channel, *(f"{r.version} {r.sha256 or r.image_digest} "
                                                     f"{','.join(missing(r))}"
                                                     for r, _ in refused)]).encode())
    listed = [{"version": r.version, "requires": list(r.requires), "missing": list(missing(r))}
              for r, _ in refused[:LISTED_REFUSALS]]
    return Refusal("release-refused", key.hexdigest(), refusal_reason(refused),
                   {"releases": listed, "count": len(refused)})


def device_wariness(device: Device) -> Fraction:
    """The wariness of ``device``: from its ``deviceId``, else its machine id
    (:func:`reconciler.config.rollout_id`); without either, the most wary."""
    return wariness_of(rollout_id(device))


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

    @property
    def verified(self) -> ChannelMetadata | None:
        """The metadata verified last (by :meth:`release` right before a staging)."""
        return self._meta

    def view(self, policy: UpdatePolicy, revision: str, now: datetime) -> ChannelView:
        """The channel as ``decide`` needs it, refetched when stale."""
        key = (policy.spec.channel.url, revision)
        if key != self._key or self._next is None or now >= self._next:
            self.refresh(policy, now)
            self._key = key
        if self._meta is None:
            return ChannelView(error=self._error or "no metadata", retry_after=self._retry)
        return view_of(self._meta, self._error, self._retry, self.device.runtime, now,
                       self.wariness)

    @property
    def wariness(self) -> Fraction:
        """This device's place in every phased rollout (``docs/rollout.md``)."""
        return device_wariness(self.device)

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
            digest = hashlib.sha256(raw).hexdigest()
            self._refused(trust, Refusal("channel-refused", digest, str(exc),
                                         {"metadata_sha256": digest}))
            raise
        if self.save_trust:
            trust = trust.advanced(meta)
            trust.save(self.trust_path)
        refusal = release_refusal(meta, self.device.runtime)
        if refusal is not None:
            self._refused(trust, refusal)
        return meta

    def _refused(self, trust: ChannelTrust, refusal: Refusal) -> None:
        """Hand a refusal to ``on_refused`` unless it was recorded before."""
        if self.on_refused is None or refusal.key in trust.refused:
            return
        self.on_refused(refusal)
        trust.with_refused(refusal.key).save(self.trust_path)

    def release(self, policy: UpdatePolicy, version: str) -> Release:
        """Freshly verified metadata for ``version``, right before staging it."""
        meta = self.fetch(policy.spec.channel.url, self.clock())
        self._meta, self._error = meta, None
        found = meta.find(version)
        if found is None:
            raise ReleaseError(f"{version} is not published on channel {meta.channel!r}")
        unsupported = why_not(found, runtime=self.device.runtime)
        if unsupported is not None:
            raise ReleaseError(f"{version} cannot be installed on this device: it {unsupported}")
        return found
