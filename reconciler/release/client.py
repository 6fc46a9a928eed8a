"""The device's side of a channel: fetch ``metadata.json`` and remember what it trusted.

Fetching is the only I/O here; believing is :func:`verify_metadata`'s job.
Network failures become :class:`ChannelUnavailable` (try again later);
refusals stay :class:`ReleaseError`. What the device learned from metadata it
accepted — the highest serial per channel and the newest signed time — is kept
in a small JSON file (:class:`ChannelTrust`) and only ever moves forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from nacl.signing import VerifyKey

from reconciler.errors import ChannelUnavailable, ReleaseError, StateError
from reconciler.release.metadata import ChannelMetadata, format_time, verify_metadata
from reconciler.store import atomic_write_json, read_json

METADATA_FILE = "metadata.json"
MAX_METADATA_BYTES = 16 << 20  # far above a real channel; stops an endless answer
RETRY_DELAY = 60.0


def metadata_url(base_url: str) -> str:
    """Where a channel at ``base_url`` keeps its signed metadata."""
    return f"{base_url.rstrip('/')}/{METADATA_FILE}"


def _get_bounded(url: str, timeout: float, transport: httpx.BaseTransport | None) -> bytes:
    with httpx.Client(timeout=timeout, transport=transport, follow_redirects=True) as client:
        with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status_code != 200:
                raise ChannelUnavailable(f"channel: {url} answered HTTP {resp.status_code}",
                                         RETRY_DELAY)
            body = bytearray()
            for chunk in resp.iter_raw(64 * 1024):
                body += chunk
                if len(body) > MAX_METADATA_BYTES:
                    raise ReleaseError(f"channel: {url} is larger than "
                                       f"{MAX_METADATA_BYTES} bytes; refused")
            return bytes(body)


def fetch_metadata(base_url: str, trusted: Mapping[str, VerifyKey], revoked: frozenset[str],
                   now: datetime, min_serial: int | None, trusted_time: datetime | None, *,
                   channel: str | None = None, timeout: float = 10.0,
                   transport: httpx.BaseTransport | None = None) -> ChannelMetadata:
    """Download and verify the metadata of the channel at ``base_url``."""
    url = metadata_url(base_url)
    try:
        raw = _get_bounded(url, timeout, transport)
    except httpx.HTTPError as exc:
        raise ChannelUnavailable(f"channel: {url}: {type(exc).__name__}: {exc}",
                                 RETRY_DELAY) from exc
    return verify_metadata(raw, trusted, revoked, now, min_serial, trusted_time,
                           channel=channel)


@dataclass(frozen=True)
class ChannelTrust:
    """What accepted metadata taught the device; it never moves backward.

    ``serials`` holds the highest serial accepted per channel name (metadata
    rollback protection); ``trusted_time`` is the newest ``issued`` time of
    accepted metadata: signed, so a wrong device clock cannot move it.
    """

    serials: Mapping[str, int] = field(default_factory=dict)
    trusted_time: datetime | None = None

    @classmethod
    def load(cls, path: Path) -> ChannelTrust:
        """The stored trust; a fresh device (no file) trusts no serial and no time."""
        doc = read_json(path, {})
        try:
            serials = {str(k): int(v) for k, v in doc.get("serials", {}).items()}
            text = doc.get("trusted_time")
            moment = datetime.fromisoformat(text) if text else None
        except (AttributeError, TypeError, ValueError) as exc:
            raise StateError(f"{path}: not a channel trust file ({exc})") from exc
        return cls(serials, moment)

    def save(self, path: Path) -> None:
        """Write durably (atomic replace, fsync)."""
        moment = format_time(self.trusted_time) if self.trusted_time else None
        atomic_write_json(path, {"serials": dict(self.serials), "trusted_time": moment})

    def min_serial(self, channel: str) -> int | None:
        """The lowest serial still acceptable for ``channel``."""
        return self.serials.get(channel)

    def advanced(self, meta: ChannelMetadata) -> ChannelTrust:
        """The trust after accepting ``meta``: serial and time only grow."""
        serials = dict(self.serials)
        serials[meta.channel] = max(meta.serial, serials.get(meta.channel, meta.serial))
        times = [t for t in (self.trusted_time, meta.issued) if t is not None]
        return ChannelTrust(serials, max(times))


def fetch_trusted(base_url: str, channel: str, trusted: Mapping[str, VerifyKey],
                  revoked: frozenset[str], now: datetime, trust_path: Path, *,
                  timeout: float = 10.0,
                  transport: httpx.BaseTransport | None = None) -> ChannelMetadata:
    """Fetch with the stored serial and time, and store them again only on success."""
    trust = ChannelTrust.load(trust_path)
    meta = fetch_metadata(base_url, trusted, revoked, now, trust.min_serial(channel),
                          trust.trusted_time, channel=channel, timeout=timeout,
                          transport=transport)
    trust.advanced(meta).save(trust_path)
    return meta
