"""The health probe: one probe, read into an answer, and the rollback reason it yields."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.errors import ConfigError, StateError
from reconciler.health import HealthAnswer, probe, rollback_reason
from reconciler.sim.image import build_sim_image
from reconciler.sim.os import SimOsProcess, launch
from tests.waiting import wait_for

DASH = "\u2014"


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[Callable[..., SimOsProcess]]:
    """Boot a simulated OS from a slot whose image's release file holds the given fields."""
    running: list[SimOsProcess] = []

    def start(version: str = "1.0.1", **fields: str) -> SimOsProcess:
        slot = tmp_path / f"slot-{len(running)}"
        build_sim_image(slot, version, size=16 << 10, fields=fields)
        running.append(launch(slot, tmp_path / f"ready-{len(running)}.json"))
        return running[-1]

    yield start
    for process in running:
        process.stop()


def probe_until(url: str, done: Callable[[HealthAnswer], bool], within: float) -> HealthAnswer:
    """Probe until ``done`` holds for the answer; fail after ``within`` seconds."""
    return wait_for(lambda: (lambda a: a if done(a) else None)(probe(url, timeout=1.0)),
                    within, f"an answer from {url} that satisfies the test")


def answering(status: int, **kwargs: object) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, **kwargs))  # type: ignore[arg-type]


@pytest.fixture
def silent_server() -> Iterator[tuple[int, Callable[[socket.socket], None]]]:
    """A raw TCP server on a free port; each accepted connection is given to ``talk``."""
    listener = socket.create_server(("127.0.0.1", 0))
    talk: list[Callable[[socket.socket], None]] = [lambda conn: None]
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            threading.Thread(target=talk[0], args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], lambda f: talk.__setitem__(0, f)  # type: ignore[call-overload]
    listener.close()
    for conn in held:
        conn.close()


# Against a real simulated OS over loopback

def test_healthy_os_is_a_200_healthy_answer(boot: Callable[..., SimOsProcess]) -> None:
    answer = probe(boot(BEHAVIOUR="healthy", STARTUP_SECONDS="0").url)
    assert answer == HealthAnswer(healthy=True, status=200, failing={}, error=None)
    assert answer.summary() == "200 healthy"


def test_gateway_fails_names_the_gateway(boot: Callable[..., SimOsProcess]) -> None:
    answer = probe(boot(BEHAVIOUR="gateway-fails", STARTUP_SECONDS="0").url)
    assert (answer.healthy, answer.status) == (False, 503)
    assert answer.failing == {"gateway": "failed to start"}
    assert answer.summary() == "503: gateway failed to start"
    reason = rollback_reason(answer, timed_out=True)
    assert reason == f"Health check timeout {DASH} gateway failed to start"


def test_fails_later_turns_from_healthy_to_scheduler_crashed(
        boot: Callable[..., SimOsProcess]) -> None:
    url = boot(BEHAVIOUR="fails-later", STARTUP_SECONDS="0", FAILS_AFTER_SECONDS="1.0").url
    assert probe(url).healthy
    answer = probe_until(url, lambda a: not a.healthy, within=4.0)
    assert answer.failing == {"scheduler": "crashed"}
    assert answer.summary() == "503: scheduler crashed"


def test_startup_phase_is_unhealthy_then_healthy(boot: Callable[..., SimOsProcess]) -> None:
    url = boot(BEHAVIOUR="healthy", STARTUP_SECONDS="1.0").url
    first = probe(url)
    assert first.status == 503
    assert first.failing == {"gateway": "starting", "scheduler": "starting"}
    assert probe_until(url, lambda a: a.healthy, within=4.0).healthy


def test_failing_services_from_the_image_header_reach_the_reason(
        boot: Callable[..., SimOsProcess]) -> None:
    os_ = boot(BEHAVIOUR="gateway-fails", STARTUP_SECONDS="0",
               FAILING_SERVICES="database:migration failed,vault:sealed")
    reason = rollback_reason(probe(os_.url), timed_out=True)
    assert reason == f"Health check timeout {DASH} database migration failed, vault sealed"


def test_proxy_settings_do_not_divert_the_probe(
        boot: Callable[..., SimOsProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    url = boot(BEHAVIOUR="healthy", STARTUP_SECONDS="0").url
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9/")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert probe(url).healthy


# Unreachable and hanging endpoints

def test_closed_port_is_unreachable_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but never listening: connections are refused
        answer = probe(f"http://127.0.0.1:{port}/health/ready")
    assert answer == HealthAnswer(healthy=False, status=None, error="connection refused")
    assert answer.summary() == "unreachable: connection refused"


def test_hanging_endpoint_times_out_with_the_timeout_in_the_error(
        silent_server: tuple[int, Callable[..., None]]) -> None:
    port, _ = silent_server  # accepts, never answers: only the probe's timeout can end it
    answer = probe(f"http://127.0.0.1:{port}/health/ready", timeout=0.3)
    assert (answer.healthy, answer.status, answer.error) == (False, None, "timed out after 0.3s")


def test_trickling_endpoint_is_bounded_by_the_whole_timeout(
        silent_server: tuple[int, Callable[..., None]]) -> None:
    port, set_talk = silent_server

    sent: list[int] = []

    def trickle(conn: socket.socket) -> None:  # a byte every 50 ms: 5 s for the whole body
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000\r\n\r\n")
        try:
            for _ in range(100):
                conn.sendall(b" ")
                sent.append(1)
                time.sleep(0.05)
        except OSError:
            pass

    set_talk(trickle)
    answer = probe(f"http://127.0.0.1:{port}/health/ready", timeout=0.3)
    assert len(sent) < 100, "the probe read the whole trickle instead of giving up"
    assert answer.error == "timed out after 0.3s"


def test_connection_closed_without_answer_is_unreachable(
        silent_server: tuple[int, Callable[..., None]]) -> None:
    port, set_talk = silent_server
    set_talk(lambda conn: (conn.recv(4096), conn.close()))
    answer = probe(f"http://127.0.0.1:{port}/health/ready", timeout=1.0)
    assert (answer.status, answer.error) == (None, "connection closed without an answer")


def test_a_url_that_is_not_a_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="health probe"):
        probe("ftp://127.0.0.1/health/ready")


# Reading answers (injected transport)

def test_any_200_is_healthy_whatever_the_body() -> None:
    body = {"status": "unhealthy", "services": {"gateway": "failed to start"}}
    answer = probe("http://os/health/ready", transport=answering(200, json=body))
    assert answer == HealthAnswer(healthy=True, status=200)


def test_non_json_500_has_no_failing_services_and_uses_the_status_line() -> None:
    answer = probe("http://os/health/ready", transport=answering(500, text="<h1>oops</h1>"))
    assert (answer.healthy, answer.status, answer.failing) == (False, 500, {})
    assert answer.summary() == "500 Internal Server Error"
    assert rollback_reason(answer, timed_out=True) == (
        f"Health check timeout {DASH} health endpoint answered 500 Internal Server Error")


def test_json_without_services_uses_the_status_line() -> None:
    answer = probe("http://os/", transport=answering(503, json={"status": "unhealthy"}))
    assert answer.failing == {}
    assert answer.summary() == "503 Service Unavailable"


def test_services_as_nested_objects_are_read_by_their_status() -> None:
    services = {"gateway": {"status": "failed to start", "since": 3},
                "scheduler": {"status": "running"}, "vault": {"status": "Healthy"}}
    answer = probe("http://os/", transport=answering(503, json={"services": services}))
    assert answer.failing == {"gateway": "failed to start"}


def test_failing_keeps_the_order_of_the_answer() -> None:
    services = {"scheduler": "crashed", "gateway": "failed to start", "api": "ok"}
    answer = probe("http://os/", transport=answering(503, json={"services": services}))
    assert list(answer.failing) == ["scheduler", "gateway"]
    assert answer.summary() == "503: scheduler crashed, gateway failed to start"


# Rollback reasons and the stored form

@pytest.mark.parametrize(("service", "what"), [("gateway", "failed to start"),
                                               ("database", "disk full"),
                                               ("vault", "sealed")])
def test_rollback_reason_names_the_failing_service(service: str, what: str) -> None:
    answer = HealthAnswer(healthy=False, status=503, failing={service: what})
    reason = rollback_reason(answer, timed_out=True)
    assert reason == f"Health check timeout {DASH} {service} {what}"


def test_rollback_reason_joins_several_services_in_answer_order() -> None:
    answer = HealthAnswer(healthy=False, status=503,
                          failing={"gateway": "failed to start", "scheduler": "crashed"})
    assert rollback_reason(answer, timed_out=True) == (
        f"Health check timeout {DASH} gateway failed to start, scheduler crashed")


def test_rollback_reason_for_an_unreachable_endpoint_says_why() -> None:
    answer = HealthAnswer(healthy=False, status=None, error="connection refused")
    assert rollback_reason(answer, timed_out=True) == (
        f"Health check timeout {DASH} health endpoint unreachable (connection refused)")
    hung = HealthAnswer(healthy=False, status=None, error="timed out after 2.0s")
    assert rollback_reason(hung, timed_out=True).endswith("unreachable (timed out after 2.0s)")


def test_rollback_reason_without_any_answer() -> None:
    assert rollback_reason(None, timed_out=True) == (
        f"Health check timeout {DASH} no answer from the health endpoint")


def test_trial_ended_early_says_failed_not_timeout() -> None:
    answer = HealthAnswer(healthy=False, status=503, failing={"scheduler": "crashed"})
    reason = rollback_reason(answer, timed_out=False)
    assert reason == f"Health check failed {DASH} scheduler crashed"


def test_answer_survives_the_state_file_with_its_order() -> None:
    answer = HealthAnswer(healthy=False, status=503,
                          failing={"vault": "sealed", "gateway": "failed to start"})
    stored = json.loads(json.dumps(answer.to_dict(), sort_keys=True))  # as the state store writes
    assert HealthAnswer.from_dict(stored) == answer
    assert list(HealthAnswer.from_dict(stored).failing) == ["vault", "gateway"]
    unreachable = HealthAnswer(healthy=False, error="connection refused")
    assert HealthAnswer.from_dict(unreachable.to_dict()) == unreachable


@pytest.mark.parametrize("record", [None, [], {}, {"healthy": "yes"},
                                    {"healthy": False, "status": "503"},
                                    {"healthy": False, "failing": [["gateway"]]}])
def test_damaged_stored_answer_is_a_state_error(record: object) -> None:
    with pytest.raises(StateError, match="health answer"):
        HealthAnswer.from_dict(record)


# Hostile answers: bounded in memory, depth and length

def test_json_nested_too_deep_is_read_as_no_services_not_a_crash() -> None:
    body = b'{"services": {"gateway": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    answer = probe("http://os/", transport=answering(503, content=body))
    assert (answer.healthy, answer.failing) == (False, {})
    deep = b'{"services": {"a": "down", "b": ' + b"[" * 20 + b"]" * 20 + b"}}"
    assert probe("http://os/", transport=answering(503, content=deep)).failing == {}


def test_a_long_service_state_is_cut_and_control_characters_are_shown_as_marks() -> None:
    services = {"gate\x1b[31mway\n": "failed: " + "x" * 10_000}
    answer = probe("http://os/", transport=answering(503, json={"services": services}))
    assert answer.failing == {"gate?[31mway?": "failed: " + "x" * 72 + "..."}
    assert len(answer.summary()) < 120


def test_at_most_eight_failing_services_are_named() -> None:
    services = {f"svc{i}": "down" for i in range(1000)}
    answer = probe("http://os/", transport=answering(503, json={"services": services}))
    assert list(answer.failing) == [f"svc{i}" for i in range(8)] + ["..."]
    assert answer.summary().endswith("svc7 down, ... and more")


def test_a_body_that_is_not_utf8_has_no_failing_services() -> None:
    answer = probe("http://os/", transport=answering(503, content=b'{"services": {"\xff": 1}}'))
    assert (answer.status, answer.failing) == (503, {})


def _peak_while(call: Callable[[], HealthAnswer]) -> tuple[HealthAnswer, int]:
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_huge_body_is_not_received_past_the_limit(
        silent_server: tuple[int, Callable[..., None]]) -> None:
    port, set_talk = silent_server
    size = 256 << 20

    def flood(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n" % size)
        try:
            for _ in range(size // 65536):
                conn.sendall(b"{" * 65536)
        except OSError:
            pass

    set_talk(flood)
    answer, peak = _peak_while(lambda: probe(f"http://127.0.0.1:{port}/", timeout=5.0))
    assert (answer.status, answer.failing) == (503, {})
    assert peak < 4 << 20, f"{peak} bytes at the peak while reading"


def test_a_compressed_body_is_never_inflated(
        silent_server: tuple[int, Callable[..., None]]) -> None:
    port, set_talk = silent_server
    bomb = gzip.compress(b'{"services": {"a": "' + b"x" * (200 << 20) + b'"}}')

    def send(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(bomb) + bomb)

    set_talk(send)
    answer, peak = _peak_while(lambda: probe(f"http://127.0.0.1:{port}/", timeout=5.0))
    assert (answer.status, answer.failing) == (503, {})
    assert peak < 4 << 20, f"{peak} bytes at the peak while reading"


def test_a_huge_damaged_stored_answer_is_quoted_short() -> None:
    with pytest.raises(StateError, match="health answer") as caught:
        HealthAnswer.from_dict({"healthy": "x" * 100_000})
    assert len(str(caught.value)) < 300
