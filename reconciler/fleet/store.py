"""The reboot semaphores in etcd: one key per group, changed only by compare-and-swap.

``Semaphores.change(group, edit)`` reads the group's key, lets ``edit`` compute the
new value from the old one, and writes it in a transaction that succeeds only if
the key's mod revision is still the one read (0: the key did not exist). Another
replica that wrote in between makes the transaction fail; the change is then
computed again from the fresh value, a bounded number of times.

The client is ``etcd3gw`` (etcd's JSON gateway over plain HTTP); the endpoints are
tried in turn, so a dead member of a cluster is passed over.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd3gw
from etcd3gw import exceptions as etcd_errors

from reconciler.redact import redact

#: Where the groups' keys live: PREFIX + group.
PREFIX = "/kruxos/fleetlock/v1/groups/"
#: How many times a change is computed again after another writer won the race.
CAS_ATTEMPTS = 64

T = TypeVar("T")


class StoreUnavailable(Exception):
    """No etcd endpoint answered."""


class Contended(Exception):
    """The compare-and-swap lost the race ``CAS_ATTEMPTS`` times in a row."""


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Stored:
    """A key's value (decoded JSON, or None when absent) and its mod revision."""

    value: dict[str, Any] | None
    mod_revision: int


class Etcd:
    """A few etcd v3 calls over the JSON gateway, failing over between endpoints."""

    def __init__(self, urls: list[str], *, timeout: float = 5.0) -> None:
        if not urls:
            raise ValueError("no etcd endpoint given")
        self._clients = []
        for url in urls:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.hostname is None:
                raise ValueError(f"not an etcd endpoint: {redact(url)!r}")
            if parts.username is not None or parts.password is not None:
                # the gateway client sends no credentials: never accept (or echo) them
                raise ValueError(f"etcd endpoint {redact(url)!r} carries credentials "
                                 "(user:password@), which this server does not use")
            # /v3/ is etcd 3.4's gateway path (3.3 had /v3beta/); etcd3gw would
            # otherwise ask /version on every new client to find it.
            self._clients.append(etcd3gw.client(
                host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme or "http",
                timeout=timeout, api_path="/v3/"))
        self._current = 0
        self._lock = threading.Lock()
        self.transactions = 0

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        with self._lock:
            start = self._current
        for step in range(len(self._clients)):
            index = (start + step) % len(self._clients)
            client = self._clients[index]
            try:
                answer = client.post(client.get_url(path), data=json.dumps(body))
            except etcd_errors.Etcd3Exception as exc:  # refused, timed out, no leader
                last = exc
                continue
            with self._lock:
                self._current = index
            return dict(answer)
        raise StoreUnavailable(f"no etcd endpoint answered: {last}")

    def get(self, key: str) -> Stored:
        """The key's value and mod revision (a linearizable read)."""
        answer = self._call("/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs") or []
        if not kvs:
            return Stored(None, 0)
        kv = kvs[0]
        value = json.loads(base64.b64decode(kv.get("value", "")) or b"null")
        return Stored(value if isinstance(value, dict) else None, int(kv.get("mod_revision", 0)))

    def get_prefix(self, prefix: str) -> dict[str, Stored]:
        """Every key under ``prefix``."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        answer = self._call("/kv/range", {"key": _b64(prefix), "range_end": _b64(end)})
        found = {}
        for kv in answer.get("kvs") or []:
            value = json.loads(base64.b64decode(kv.get("value", "")) or b"null")
            found[base64.b64decode(kv["key"]).decode()] = Stored(
                value if isinstance(value, dict) else None, int(kv.get("mod_revision", 0)))
        return found

    def swap(self, key: str, mod_revision: int, value: dict[str, Any]) -> bool:
        """Write ``value`` only if the key's mod revision is still ``mod_revision``."""
        txn = {"compare": [{"key": _b64(key), "result": "EQUAL", "target": "MOD",
                            "mod_revision": str(mod_revision)}],
               "success": [{"request_put": {"key": _b64(key),
                                            "value": _b64(json.dumps(value, sort_keys=True))}}],
               "failure": []}
        with self._lock:
            self.transactions += 1
        return bool(self._call("/kv/txn", txn).get("succeeded", False))


class Semaphores:
    """The groups' semaphores, each changed by compare-and-swap with a bounded retry."""

    def __init__(self, etcd: Etcd, prefix: str = PREFIX) -> None:
        self.etcd = etcd
        self.prefix = prefix

    def key(self, group: str) -> str:
        return self.prefix + group

    def read(self, group: str) -> dict[str, Any] | None:
        return self.etcd.get(self.key(group)).value

    def read_all(self) -> dict[str, dict[str, Any]]:
        return {key.removeprefix(self.prefix): stored.value
                for key, stored in self.etcd.get_prefix(self.prefix).items()
                if stored.value is not None}

    def change(self, group: str,
               edit: Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, T]]) -> T:
        """Apply ``edit`` (old value -> new value, result) atomically; return its result.

        ``edit`` may run several times (once per lost race); it must not act outside.
        """
        key = self.key(group)
        for attempt in range(CAS_ATTEMPTS):
            stored = self.etcd.get(key)
            new, result = edit(stored.value)
            if new is None or new == stored.value:
                return result  # nothing to write: the read was linearizable
            if self.etcd.swap(key, stored.mod_revision, new):
                return result
            # Another replica wrote first: back off a little (jittered) and recompute.
            time.sleep(random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
        raise Contended(f"group {group!r}: {CAS_ATTEMPTS} compare-and-swap attempts lost")
