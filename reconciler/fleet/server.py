"""A FleetLock server (Zincati's reboot-slot protocol) keeping its semaphores in etcd.

Any number of replicas may serve the same etcd: each request reads the group's key
and changes it by compare-and-swap (``reconciler.fleet.store``), so the replicas
keep no state of their own. On every write the group's slot count and holder TTL
come from this replica's configuration, read again whenever the file changes.

Endpoints: ``POST /v1/pre-reboot`` and ``POST /v1/steady-state`` (the protocol:
header ``fleet-lock-protocol: true``, body ``{"client_params": {"id", "group"}}``,
200 only on success, otherwise ``{"kind", "value"}``), ``GET /v1/status`` and
``POST /v1/force-release`` (body ``{"group", "id"}``, the admin bearer token).
"""

from __future__ import annotations

import hmac
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from reconciler.fleet.store import PREFIX, Contended, Etcd, Semaphores, StoreUnavailable

GROUP_RE = re.compile(r"[a-zA-Z0-9.-]+")
#: The largest request body read; a larger one is refused unread.
MAX_BODY = 16 * 1024
#: How many past releases (TTL expiries, forced releases) a group's key keeps.
RELEASED_KEPT = 20
MAX_ID = 256


class ConfigInvalid(Exception):
    """The server's configuration file cannot be used."""


@dataclass(frozen=True)
class GroupRule:
    slots: int
    ttl: float | None  # seconds a holder may keep its slot; None: for ever


@dataclass(frozen=True)
class ServerConfig:
    """What a replica applies: slots and TTL per group, and the tokens."""

    default: GroupRule
    groups: dict[str, GroupRule] = field(default_factory=dict)
    admin_token: str | None = None
    client_token: str | None = None

    def rule(self, group: str) -> GroupRule:
        return self.groups.get(group, self.default)


def _count(value: object, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigInvalid(f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


def _ttl(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigInvalid(f"{what} must be a number of seconds > 0, not {value!r}")
    return float(value)


def _token(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 16:
        raise ConfigInvalid(f"{what} must be a string of at least 16 characters")
    return value


def parse_config(data: object, default_slots: int) -> ServerConfig:
    """The configuration of ``data`` (the YAML file's document)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigInvalid("the configuration must be a mapping")
    known = {"slots", "ttl", "groups", "adminToken", "clientToken"}
    if unknown := set(data) - known:
        raise ConfigInvalid(f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
    default = GroupRule(_count(data.get("slots", default_slots), "slots", minimum=0),
                        _ttl(data.get("ttl"), "ttl"))
    groups = {}
    raw_groups = data.get("groups") or {}
    if not isinstance(raw_groups, dict):
        raise ConfigInvalid("groups must be a mapping of group name to its rule")
    for name, rule in raw_groups.items():
        if not isinstance(name, str) or not GROUP_RE.fullmatch(name):
            raise ConfigInvalid(f"group name {name!r} does not match {GROUP_RE.pattern}")
        rule = rule or {}
        if not isinstance(rule, dict) or set(rule) - {"slots", "ttl"}:
            raise ConfigInvalid(f"groups.{name} may set slots and ttl only")
        groups[name] = GroupRule(
            _count(rule.get("slots", default.slots), f"groups.{name}.slots", minimum=0),
            _ttl(rule.get("ttl", default.ttl), f"groups.{name}.ttl"))
    return ServerConfig(default, groups, _token(data.get("adminToken"), "adminToken"),
                        _token(data.get("clientToken"), "clientToken"))


class ConfigSource:
    """The configuration file, read again when it changes (its size, time or inode)."""

    def __init__(self, path: Path | None, default_slots: int) -> None:
        self.path = path
        self.default_slots = default_slots
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._config = self._load() if path is not None else ServerConfig(
            GroupRule(default_slots, None))

    def _load(self) -> ServerConfig:
        assert self.path is not None
        stat = self.path.stat()
        try:
            data = YAML(typ="safe").load(self.path.read_text())
        except YAMLError as exc:
            raise ConfigInvalid(f"{self.path}: not YAML: {exc}") from None
        config = parse_config(data, self.default_slots)
        self._seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        return config

    def current(self) -> ServerConfig:
        if self.path is None:
            return self._config
        with self._lock:
            try:
                stat = self.path.stat()
                if (stat.st_mtime_ns, stat.st_size, stat.st_ino) != self._seen:
                    self._config = self._load()
                    log(f"configuration reloaded from {self.path}")
            except (OSError, ConfigInvalid) as exc:
                # Keep the last good configuration: a half-written file must not
                # open or close every group.
                log(f"configuration not reloaded, keeping the last good one: {exc}")
            return self._config


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} fleetlock: {message}", file=sys.stderr, flush=True)


# ---- the semaphore's rules (pure: old value in, new value and answer out) ------------------

def _normalised(old: dict[str, Any] | None, group: str, rule: GroupRule, now: float
                ) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``old`` with this replica's slot count and TTL applied; the ids expired."""
    sem: dict[str, Any] = {"group": group, "holders": {}, "released": []}
    if old is not None:
        sem["holders"] = {k: dict(v) for k, v in (old.get("holders") or {}).items()}
        sem["released"] = list(old.get("released") or [])
    sem["slots"] = rule.slots
    sem["ttl"] = rule.ttl
    expired = []
    if rule.ttl is not None:
        for holder, held in sorted(sem["holders"].items()):
            if now - float(held.get("since", now)) > rule.ttl:
                expired.append(holder)
                del sem["holders"][holder]
                _record(sem, holder, held, now, f"held longer than the TTL of {rule.ttl:g} s")
    return sem, expired


def _record(sem: dict[str, Any], holder: str, held: dict[str, Any], now: float, why: str
            ) -> None:
    sem["released"] = [*sem["released"], {"id": holder, "since": held.get("since"),
                                          "at": now, "why": why}][-RELEASED_KEPT:]


def pre_reboot(old: dict[str, Any] | None, group: str, device: str, rule: GroupRule, now: float
               ) -> tuple[dict[str, Any], tuple[bool, list[str], int]]:
    """Take a slot (or keep the one held): (new value, (granted, expired ids, held count))."""
    sem, expired = _normalised(old, group, rule, now)
    if device in sem["holders"]:
        return sem, (True, expired, len(sem["holders"]))
    if len(sem["holders"]) < rule.slots:
        sem["holders"][device] = {"since": now}
        return sem, (True, expired, len(sem["holders"]))
    return sem, (False, expired, len(sem["holders"]))


def steady_state(old: dict[str, Any] | None, group: str, device: str, rule: GroupRule,
                 now: float) -> tuple[dict[str, Any] | None, tuple[bool, list[str]]]:
    """Release the device's slot if it holds one: (new value, (was held, expired ids))."""
    if old is None:
        return None, (False, [])  # a group nobody ever locked: nothing to write
    sem, expired = _normalised(old, group, rule, now)
    held = sem["holders"].pop(device, None) is not None
    return sem, (held, expired)


def force_release(old: dict[str, Any] | None, group: str, device: str, rule: GroupRule,
                  now: float) -> tuple[dict[str, Any] | None, bool]:
    if old is None:
        return None, False
    sem, _ = _normalised(old, group, rule, now)
    held = sem["holders"].pop(device, None)
    if held is not None:
        _record(sem, device, held, now, "released by an operator")
    return sem, held is not None


# ---- HTTP -----------------------------------------------------------------------------------

class Refusal(Exception):
    """An answer other than 200: status, kind and value."""

    def __init__(self, status: int, kind: str, value: str) -> None:
        super().__init__(value)
        self.status, self.kind, self.value = status, kind, value


class FleetLockServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], semaphores: Semaphores,
                 config: ConfigSource) -> None:
        super().__init__(address, Handler)
        self.semaphores = semaphores
        self.config = config


class Handler(BaseHTTPRequestHandler):
    server: FleetLockServer
    protocol_version = "HTTP/1.1"
    server_version = "kruxos-fleetlock"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes: without this, Nagle's algorithm and
        # the peer's delayed ACK hold every answer back by tens of milliseconds.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # each decision is logged by the handler itself, without headers

    def _answer(self, status: int, body: dict[str, Any], *, close: bool = False) -> None:
        data = json.dumps(body, sort_keys=True).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _bearer(self, token: str | None) -> bool:
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                  token.encode())

    def _body(self) -> dict[str, Any]:
        length_header = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise Refusal(411, "length_required", "a body must come with Content-Length")
        try:
            length = int(length_header or "0")
        except ValueError:
            self.close_connection = True
            raise Refusal(400, "bad_request", "Content-Length is not a number") from None
        if length > MAX_BODY or length < 0:
            self.close_connection = True  # the body is left unread
            raise Refusal(413, "body_too_large", f"the body may be at most {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise Refusal(400, "bad_request", "the body is not JSON") from None
        if not isinstance(body, dict):
            raise Refusal(400, "bad_request", "the body is not a JSON object")
        return body

    def _client_params(self) -> tuple[str, str]:
        if self.headers.get("fleet-lock-protocol", "").strip().lower() != "true":
            raise Refusal(400, "missing_protocol_header",
                          "the header fleet-lock-protocol: true is required")
        body = self._body()
        params = body.get("client_params")
        if not isinstance(params, dict):
            raise Refusal(400, "bad_request", "client_params is missing or not an object")
        device, group = params.get("id"), params.get("group")
        if not isinstance(device, str) or not device or len(device) > MAX_ID:
            raise Refusal(400, "bad_request",
                          f"client_params.id must be a string of 1 to {MAX_ID} characters")
        if not isinstance(group, str) or not GROUP_RE.fullmatch(group) or len(group) > MAX_ID:
            raise Refusal(400, "invalid_group", f"the group must match {GROUP_RE.pattern}")
        return device, group

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch({"/v1/pre-reboot": self._pre_reboot,
                        "/v1/steady-state": self._steady_state,
                        "/v1/force-release": self._force_release})

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch({"/v1/status": self._status})

    def _dispatch(self, routes: dict[str, Any]) -> None:
        route = routes.get(self.path.split("?", 1)[0])
        try:
            if route is None:
                self.close_connection = True
                raise Refusal(404, "not_found", f"no such endpoint: {self.command} "
                                                f"{self.path[:100]}")
            route()
        except Refusal as refusal:
            self._answer(refusal.status, {"kind": refusal.kind, "value": refusal.value},
                         close=self.close_connection)
        except StoreUnavailable as exc:
            log(f"etcd unavailable: {exc}")
            self._answer(503, {"kind": "store_unavailable", "value": "etcd did not answer"})
        except Contended as exc:
            log(str(exc))
            self._answer(503, {"kind": "contended", "value": str(exc)})
        except Exception as exc:  # noqa: BLE001 - answered, not dropped
            log(f"internal error: {exc!r}")
            self._answer(500, {"kind": "internal", "value": "internal error (see the log)"},
                         close=True)

    def _pre_reboot(self) -> None:
        config = self.server.config.current()
        if not self._bearer(config.client_token):
            raise Refusal(401, "unauthorized", "a valid client bearer token is required")
        device, group = self._client_params()
        rule = config.rule(group)
        granted, expired, held = self.server.semaphores.change(
            group, lambda old: pre_reboot(old, group, device, rule, time.time()))
        for gone in expired:
            log(f"group {group}: {gone} released: held longer than the TTL of {rule.ttl:g} s")
        if not granted:
            log(f"group {group}: {device} refused: {held} of {rule.slots} slots held")
            raise Refusal(409, "failed_lock",
                          f"all {rule.slots} slots of group {group} are held")
        log(f"group {group}: {device} holds a slot ({held} of {rule.slots})")
        self._answer(200, {})

    def _steady_state(self) -> None:
        config = self.server.config.current()
        if not self._bearer(config.client_token):
            raise Refusal(401, "unauthorized", "a valid client bearer token is required")
        device, group = self._client_params()
        rule = config.rule(group)
        held, expired = self.server.semaphores.change(
            group, lambda old: steady_state(old, group, device, rule, time.time()))
        for gone in expired:
            log(f"group {group}: {gone} released: held longer than the TTL of {rule.ttl:g} s")
        if held:
            log(f"group {group}: {device} released its slot")
        self._answer(200, {})

    def _force_release(self) -> None:
        config = self.server.config.current()
        if config.admin_token is None:
            raise Refusal(403, "forbidden", "no adminToken is configured on this server")
        if not self._bearer(config.admin_token):
            raise Refusal(401, "unauthorized", "a valid admin bearer token is required")
        body = self._body()
        device, group = body.get("id"), body.get("group")
        if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
            raise Refusal(400, "invalid_group", f"the group must match {GROUP_RE.pattern}")
        if not isinstance(device, str) or not device:
            raise Refusal(400, "bad_request", "id must be a non-empty string")
        rule = config.rule(group)

        released = self.server.semaphores.change(
            group, lambda old: force_release(old, group, device, rule, time.time()))
        if not released:
            raise Refusal(404, "not_held", f"{device} holds no slot of group {group}")
        log(f"group {group}: {device} released by an operator")
        self._answer(200, {})

    def _status(self) -> None:
        config = self.server.config.current()
        if config.client_token is not None and not (
                self._bearer(config.client_token) or self._bearer(config.admin_token)):
            raise Refusal(401, "unauthorized", "a valid bearer token is required")
        now = time.time()
        groups = []
        for name, sem in sorted(self.server.semaphores.read_all().items()):
            rule = config.rule(name)
            holders = [{"id": holder, "since": held.get("since"),
                        "age": round(now - float(held.get("since", now)), 3),
                        "expired": rule.ttl is not None
                        and now - float(held.get("since", now)) > rule.ttl}
                       for holder, held in sorted((sem.get("holders") or {}).items())]
            groups.append({"group": name, "slots": rule.slots, "stored_slots": sem.get("slots"),
                           "ttl": rule.ttl, "holders": holders,
                           "released": sem.get("released") or []})
        self._answer(200, {"groups": groups})


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(etcd_urls: list[str], listen: str, slots: int, config_path: Path | None,
          prefix: str = PREFIX) -> None:
    """Serve until SIGTERM or SIGINT."""
    config = ConfigSource(config_path, slots)
    server = FleetLockServer(parse_listen(listen), Semaphores(Etcd(etcd_urls), prefix), config)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log(f"listening on {host!s}:{port} (pid {os.getpid()}), etcd {', '.join(etcd_urls)}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log("stopped")
