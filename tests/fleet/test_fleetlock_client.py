"""The device's FleetLock client against ``kruxos fleetlock serve`` on a real etcd.

Real processes and real HTTP on 127.0.0.1: the server replica of
``tests/etcd_rig.py`` and the client of :mod:`reconciler.fleet.client`. What a
device may rely on: a slot is granted while one is free and refused with the
server's kind otherwise; asking again while holding is 200 (the fence before a
reboot); giving it back is idempotent; a server that is down or answers outside
the protocol is an answer too, never an exception; a token is sent and never shown.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from reconciler.fleet.client import MAX_ANSWER, FleetLockClient, FleetLockError, LockAnswer
from tests.etcd_rig import Cluster, Server, free_port, start_server

pytestmark = [pytest.mark.slow, pytest.mark.needs_tool("etcd")]

TOKEN = "client-" + "5e6f7a8b9c0d1e2f3a4b"


def test_a_slot_is_granted_fenced_refused_and_given_back(etcd: Cluster,
                                                        servers: list[Server],
                                                        tmp_path: Path) -> None:
    servers.append(start_server(tmp_path, etcd.urls, slots=1))
    url = servers[0].url
    first, second = (FleetLockClient(url, f"device-{n}", "canary") for n in (1, 2))
    assert first.pre_reboot("1.0.1") == LockAnswer(True, 200)
    assert first.pre_reboot("1.0.1").ok, "asking again while holding: the fence passes"
    refused = second.pre_reboot("1.0.1")
    assert not refused.ok and refused.status is not None and refused.status >= 400
    assert refused.kind == "failed_lock", refused
    assert refused.describe().startswith(f"{refused.status} failed_lock"), refused.describe()
    assert first.steady_state().ok and first.steady_state().ok  # idempotent
    assert second.pre_reboot("1.0.1").ok  # the slot given back is free again


def test_the_token_is_sent_and_never_shown(etcd: Cluster, servers: list[Server],
                                           tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(f"slots: 2\nclientToken: {TOKEN}\n")
    servers.append(start_server(tmp_path, etcd.urls, config=config))
    url = servers[0].url
    without = FleetLockClient(url, "device-9", "tokens").pre_reboot()
    assert (without.ok, without.status, without.kind) == (False, 401, "unauthorized")
    assert FleetLockClient(url, "device-9", "tokens", token=TOKEN).pre_reboot().ok
    down = FleetLockClient(f"http://127.0.0.1:{free_port()}/", "device-9", "tokens",
                           token=TOKEN).pre_reboot()
    assert (down.ok, down.status, down.kind) == (False, None, "unreachable"), down
    assert TOKEN not in down.describe()


def test_bad_names_are_refused_before_any_request() -> None:
    for group in ("", "canary\n", "two words", "a/b", "x" * 257):
        with pytest.raises(FleetLockError, match="fleet lock group"):
            FleetLockClient("http://127.0.0.1:1/", "device-1", group)
    with pytest.raises(FleetLockError, match="device id"):
        FleetLockClient("http://127.0.0.1:1/", "dev ice", "canary")
    with pytest.raises(FleetLockError, match="fleet lock server"):
        FleetLockClient("ftp://127.0.0.1/", "device-1", "canary")


def _one_answer_server(answer: bytes) -> tuple[str, threading.Thread]:
    """A socket on 127.0.0.1 that reads one request and writes ``answer`` (a server that
    does not speak the protocol: the client must still give a bounded answer)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                conn.recv(65536)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{port}/", thread


@pytest.mark.parametrize(("body", "kind"), [
    (b"<html>busy</html>", "bad_answer"),
    (b'{"value": "no kind"}', "bad_answer"),
    (b'{"kind": "failed_lock\\u0007", "value": "held\\n"}', "failed_lock\\x07"),
    (b"x" * (MAX_ANSWER * 4), "bad_answer"),
])
def test_an_answer_outside_the_protocol_is_bounded_and_printable(body: bytes,
                                                                 kind: str) -> None:
    head = f"HTTP/1.1 503 Busy\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    url, thread = _one_answer_server(head.encode() + body)
    answer = FleetLockClient(url, "device-1", "canary").pre_reboot()
    thread.join(timeout=10)
    assert (answer.ok, answer.status, answer.kind) == (False, 503, kind), answer
    assert answer.describe().isprintable() and len(answer.describe()) < 300
