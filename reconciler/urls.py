"""HTTP URLs of the channel and the health endpoint: the one parser (pure).

A URL is parsed here when a spec is validated *and* here again when the
runtime builds the address it fetches, so a URL the validator accepts is one
the runtime can use: a spec such as ``url: "http://[::1"`` once passed
validation and then made every daemon pass raise. The rules are stricter than
what :func:`urllib.parse.urlsplit` tolerates, so that any accepted URL is also
one an HTTP client accepts unchanged:

- ``http`` or ``https``, a host (a DNS name, an IPv4 address, or an IPv6
  address in brackets), an optional port 1-65535, a path;
- printable ASCII only: no spaces, control characters or raw non-ASCII
  (percent-encode them; write an international host in its ``xn--`` form);
- no ``user:password@``: credentials belong in the device config, never in a
  spec that is kept in Git (and an error never echoes them);
- no ``#fragment``; a channel URL has no ``?query`` either (files are named
  under it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from reconciler.errors import UrlError
from reconciler.quoting import excerpt

__all__ = ["MAX_URL_LENGTH", "HttpUrl", "UrlError", "parse_channel_url", "parse_url"]

MAX_URL_LENGTH = 2048
_SCHEMES = ("http", "https")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_PATH = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*$")
_QUERY = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*$")
_BRACKETED = re.compile(r"^\[[^\]]*\](?::[0-9]*)?$")
_USERINFO = re.compile(r"(?P<user>[^/?#@:]*)(?::[^/?#@]*)?@")


@dataclass(frozen=True)
class HttpUrl:
    """A parsed http(s) URL; :meth:`text` is what an HTTP client is given."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: str = ""

    @property
    def netloc(self) -> str:
        """``host[:port]``, an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def text(self) -> str:
        """The URL as one string."""
        tail = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{self.netloc}{self.path or '/'}{tail}"

    def join(self, name: str) -> str:
        """The URL of the file ``name`` under this one (a channel's metadata or image)."""
        if not _PATH.match(name) or name.startswith("/") or "?" in name:
            raise UrlError(f"{excerpt(name)} is not a relative file name")
        base = self.path if self.path.endswith("/") else self.path + "/"
        return f"{self.scheme}://{self.netloc}{base}{name}"

    def with_netloc(self, netloc: str) -> HttpUrl:
        """The same URL on another ``host:port`` (the simulator's port map)."""
        moved = parse_url(f"{self.scheme}://{netloc}/")
        return replace(self, host=moved.host, port=moved.port)


def parse_url(text: object, *, query: bool = True) -> HttpUrl:
    """Parse an http(s) URL, or raise :class:`UrlError` naming the first problem."""
    if not isinstance(text, str):
        raise UrlError(f"{excerpt(text)} is not a URL (write it as a string)")
    _check_characters(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UrlError(f"{_shown(text)} is not a valid URL ({_reason(exc)})") from None
    if parts.scheme not in _SCHEMES or not text.lower().startswith(parts.scheme + "://"):
        raise UrlError(f"{_shown(text)} is not an http(s) URL (write http://host/...)")
    if "@" in parts.netloc:
        raise UrlError(f"{_shown(text)} carries credentials (user:password@): put channel "
                       "credentials in the device config, never in the spec")
    if "#" in text:
        raise UrlError(f"{_shown(text)} has a #fragment, which an HTTP request cannot carry")
    host = _host(parts.hostname or "", parts.netloc, text)
    return HttpUrl(parts.scheme, host, _port(port, parts.netloc, text),
                   _path(parts.path, text), _query(parts.query, query, text))


def parse_channel_url(text: object) -> HttpUrl:
    """A channel's base URL: like :func:`parse_url`, without a query, path ending in ``/``."""
    url = parse_url(text, query=False)
    return url if url.path.endswith("/") else replace(url, path=url.path + "/")


def _check_characters(text: str) -> None:
    if len(text) > MAX_URL_LENGTH:
        raise UrlError(f"{_shown(text)} is longer than {MAX_URL_LENGTH} characters")
    for char in text:
        if char == " ":
            raise UrlError(f"{_shown(text)} contains a space (write it as %20)")
        if not " " < char < "\x7f":
            raise UrlError(f"{_shown(text)} contains {excerpt(char)}: a URL is printable ASCII "
                           "(percent-encode other characters; an international host in its "
                           "xn-- form)")


def _host(host: str, netloc: str, text: str) -> str:
    if not host:
        raise UrlError(f"{_shown(text)} has no host")
    if netloc.startswith("["):
        if not _BRACKETED.match(netloc):
            raise UrlError(f"{_shown(text)}: after an IPv6 host in [ ] only a :port may follow")
        if "%" in host:
            raise UrlError(f"{_shown(text)}: an IPv6 zone (%...) cannot be used here")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            raise UrlError(f"{_shown(text)}: {excerpt(host)} is not an IPv6 address") from None
    if re.match(r"^[0-9.]+$", host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise UrlError(f"{_shown(text)}: {excerpt(host)} is not an IPv4 address") from None
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise UrlError(f"{_shown(text)}: {excerpt(host)} is not a host name")
    return host


def _port(port: int | None, netloc: str, text: str) -> int | None:
    if port == 0:
        raise UrlError(f"{_shown(text)}: port 0 is not a port (1-65535)")
    if port is not None and not netloc.endswith(f":{port}"):
        raise UrlError(f"{_shown(text)}: the port must be a number from 1 to 65535")
    return port


def _path(path: str, text: str) -> str:
    if not _PATH.match(path):
        raise UrlError(f"{_shown(text)}: the path has a character that must be "
                       "percent-encoded")
    return path


def _query(query: str, allowed: bool, text: str) -> str:
    if query and not allowed:
        raise UrlError(f"{_shown(text)} has a ?query; a channel URL names a directory")
    if not _QUERY.match(query):
        raise UrlError(f"{_shown(text)}: the query has a character that must be "
                       "percent-encoded")
    return query


def _reason(exc: ValueError) -> str:
    """urllib's reason, reworded where it is cryptic."""
    text = str(exc)
    if "Invalid IPv6 URL" in text:
        return "an IPv6 host is written between [ and ]: http://[::1]:8080/"
    if "does not appear to be an IPv" in text:
        return "the host between [ and ] is not an IPv6 address"
    if "Port" in text or "port" in text:
        return "the port must be a number from 1 to 65535"
    return excerpt(text)


def _shown(text: str) -> str:
    """The URL quoted for a message, its password masked as the redaction does (``user:***@``)."""
    return excerpt(_USERINFO.sub(_masked, text[:4 * MAX_URL_LENGTH]))


def _masked(match: re.Match[str]) -> str:
    user = match.group("user")
    return f"{user}:***@" if match.group(0) != f"{user}@" else "***@"
