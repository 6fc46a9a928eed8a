"""The device's side of a channel: fetch ``metadata.json`` and remember what it trusted.

Fetching is the only I/O here; believing is :func:`verify_metadata`'s job.
Network failures become :class:`ChannelUnavailable` (try again later);
refusals stay :class:`ReleaseError`. What the device learned from metadata it
accepted — the highest serial per channel and the newest signed time — is kept
in a small JSON file (:class:`ChannelTrust`) and only ever moves forward; the
same file remembers which refused metadata files were already recorded.

Credentials from the device config are added by :class:`CredentialTransport`,
on the one transport both the metadata and the images are fetched through, and
only for the origin the device config names.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import httpx
from nacl.signing import VerifyKey

from reconciler.config import ChannelCredentials, channel_origin
from reconciler.durable import atomic_write_json, read_json
from reconciler.errors import ChannelUnavailable, ConfigError, ReleaseError, StateError
from reconciler.redact import redact, register_secret
from reconciler.release.metadata import ChannelMetadata, format_time, verify_metadata
from reconciler.urls import parse_channel_url

METADATA_FILE = "metadata.json"
MAX_METADATA_BYTES = 16 << 20  # far above a real channel; stops an endless answer
RETRY_DELAY = 60.0
#: How many refused metadata files are remembered as recorded (the newest ones).
REMEMBERED_REFUSALS = 32
MAX_SECRET_BYTES = 4096


def metadata_url(base_url: str) -> str:
    """Where a channel at ``base_url`` keeps its signed metadata."""
    return parse_channel_url(base_url).join(METADATA_FILE)


def _get_bounded(url: str, timeout: float, transport: httpx.BaseTransport | None) -> bytes:
    with httpx.Client(timeout=timeout, transport=transport, follow_redirects=True) as client:
        with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as resp:
            if resp.status_code != 200:
                raise ChannelUnavailable(redact(f"channel: {url} answered HTTP {resp.status_code}"),
                                         RETRY_DELAY)
            body = bytearray()
            for chunk in resp.iter_raw(64 * 1024):
                body += chunk
                if len(body) > MAX_METADATA_BYTES:
                    raise ReleaseError(redact(f"channel: {url} is larger than "
                                              f"{MAX_METADATA_BYTES} bytes; refused"))
            return bytes(body)


def fetch_raw(base_url: str, *, timeout: float = 10.0,
              transport: httpx.BaseTransport | None = None) -> bytes:
    """The bytes of the channel's ``metadata.json``, not yet believed."""
    url = metadata_url(base_url)
    try:
        return _get_bounded(url, timeout, transport)
    except httpx.HTTPError as exc:
        raise ChannelUnavailable(redact(f"channel: {url}: {type(exc).__name__}: {exc}"),
                                 RETRY_DELAY) from exc


def fetch_metadata(base_url: str, trusted: Mapping[str, VerifyKey], revoked: frozenset[str],
                   now: datetime, min_serial: int | None, trusted_time: datetime | None, *,
                   channel: str | None = None, timeout: float = 10.0,
                   transport: httpx.BaseTransport | None = None) -> ChannelMetadata:
    """Download and verify the metadata of the channel at ``base_url``."""
    raw = fetch_raw(base_url, timeout=timeout, transport=transport)
    return verify_metadata(raw, trusted, revoked, now, min_serial, trusted_time,
                           channel=channel)


@dataclass(frozen=True)
class ChannelTrust:
    """What accepted metadata taught the device; it never moves backward.

    ``serials`` holds the highest serial accepted per channel name (metadata
    rollback protection); ``trusted_time`` is the newest ``issued`` time of
    accepted metadata: signed, so a wrong device clock cannot move it.
    ``refused`` lists the SHA-256 of the refused metadata files already
    recorded in the audit trail, so each distinct refused file is recorded once.
    """

    serials: Mapping[str, int] = field(default_factory=dict)
    trusted_time: datetime | None = None
    refused: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path) -> ChannelTrust:
        """The stored trust; a fresh device (no file) trusts no serial and no time."""
        try:
            doc = read_json(path, {})
        except OSError as exc:
            raise StateError(f"channel trust: cannot read {path} ({exc.strerror or exc})"
                             ) from exc
        try:
            serials = {str(k): int(v) for k, v in doc.get("serials", {}).items()}
            text = doc.get("trusted_time")
            moment = datetime.fromisoformat(text) if text else None
            refused = tuple(str(d) for d in doc.get("refused", []))
        except (AttributeError, TypeError, ValueError) as exc:
            raise StateError(f"{path}: not a channel trust file ({str(exc)[:80]})") from exc
        return cls(serials, moment, refused)

    def save(self, path: Path) -> None:
        """Write durably (atomic replace, fsync); a full disk is a :class:`StateError`.

        Metadata is only believed once its serial is on disk: otherwise a replay
        of older metadata could be accepted after the next restart.
        """
        moment = format_time(self.trusted_time) if self.trusted_time else None
        try:
            atomic_write_json(path, {"serials": dict(self.serials), "trusted_time": moment,
                                     "refused": list(self.refused)})
        except OSError as exc:
            raise StateError(f"channel trust: cannot write {path} "
                             f"({exc.strerror or exc}); nothing is believed until it can be"
                             ) from exc

    def with_refused(self, digest: str) -> ChannelTrust:
        """The trust remembering that the refused file ``digest`` was recorded."""
        kept = tuple(d for d in self.refused if d != digest)
        return replace(self, refused=(*kept, digest)[-REMEMBERED_REFUSALS:])

    def min_serial(self, channel: str) -> int | None:
        """The lowest serial still acceptable for ``channel``."""
        return self.serials.get(channel)

    def advanced(self, meta: ChannelMetadata) -> ChannelTrust:
        """The trust after accepting ``meta``: serial and time only grow."""
        serials = dict(self.serials)
        serials[meta.channel] = max(meta.serial, serials.get(meta.channel, meta.serial))
        times = [t for t in (self.trusted_time, meta.issued) if t is not None]
        return ChannelTrust(serials, max(times), self.refused)


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


def read_secret(path: Path) -> str:
    """The password or token in ``path``, refused unless only its owner can read it.

    A secret readable by the group or by everyone is not used: the file must
    be mode 0600 (or 0400), so a mistake shows instead of leaking.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"channel credentials: cannot read {path}: {exc.strerror}") from exc
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise ConfigError(f"channel credentials: {path} is mode {mode:04o}; readable by "
                              f"others, so it is not used (chmod 600 {path})")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    secret = data.decode("utf-8", "replace").strip()
    if not secret or len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"channel credentials: {path} is empty or larger than "
                          f"{MAX_SECRET_BYTES} bytes")
    register_secret(secret)
    return secret


def authorization(credentials: ChannelCredentials) -> str:
    """The ``Authorization`` header value the credentials make (read fresh each time)."""
    secret = read_secret(credentials.secret_file)
    if credentials.token_file is not None:
        return f"Bearer {secret}"
    pair = f"{credentials.user}:{secret}".encode()
    value = base64.b64encode(pair).decode()
    register_secret(value)
    return f"Basic {value}"


class CredentialTransport(httpx.BaseTransport):
    """Adds the device's channel credentials to requests for their origin, and no other.

    ``origin`` is asked on every request (a simulated device maps its loopback
    ports at boot). A spec that points the channel at another host, or a
    redirect elsewhere, gets no credentials.
    """

    def __init__(self, inner: httpx.BaseTransport, credentials: ChannelCredentials,
                 origin: Callable[[], str | None]) -> None:
        self._inner = inner
        self._credentials = credentials
        self._origin = origin

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``, with an ``Authorization`` header when it goes to the origin."""
        if channel_origin(str(request.url)) == self._origin():
            request.headers["Authorization"] = authorization(self._credentials)
        return self._inner.handle_request(request)

    def close(self) -> None:
        """Close the wrapped transport's connections."""
        self._inner.close()
