"""The simulated OS: boots only from its slot's image, answers as the image behaves."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.durable import read_json
from reconciler.sim.image import build_sim_image
from reconciler.sim.os import (
    BootRefused,
    OsProfile,
    SimOsProcess,
    health_at,
    launch,
    load_profile,
    load_release_file,
)
from tests.waiting import wait_for


def write_slot(path: Path, version: str, **fields: str) -> Path:
    """A slot file holding a simulated image whose release file has ``fields``."""
    return build_sim_image(path, version, size=16 << 10, fields=fields)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def booted(tmp_path: Path) -> Iterator[list[SimOsProcess]]:
    """Boot processes through ``booted.append(launch(...))``; all are stopped afterwards."""
    processes: list[SimOsProcess] = []
    yield processes
    for process in processes:
        process.stop()


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=2.0, trust_env=False)


def test_version_comes_from_the_booted_slot_header(
        tmp_path: Path, booted: list[SimOsProcess]) -> None:
    slot = write_slot(tmp_path / "sda3", "1.0.1", BEHAVIOUR="fails-later")
    port = free_port()
    os_ = launch(slot, tmp_path / "ready.json", port=port)
    booted.append(os_)
    assert os_.port == port
    answer = get(f"http://127.0.0.1:{port}/version").json()
    assert answer == {"version": "1.0.1", "behaviour": "fails-later", "slot_file": str(slot)}


def test_ready_file_names_the_port_and_pid(
        tmp_path: Path, booted: list[SimOsProcess]) -> None:
    slot = write_slot(tmp_path / "sda2", "2.3.4", BEHAVIOUR="healthy")
    os_ = launch(slot, tmp_path / "ready.json")
    booted.append(os_)
    info = read_json(tmp_path / "ready.json")
    assert info["port"] == os_.port and info["pid"] == os_.process.pid


def test_healthy_image_answers_200_with_its_version(
        tmp_path: Path, booted: list[SimOsProcess]) -> None:
    slot = write_slot(tmp_path / "sda3", "1.0.1", BEHAVIOUR="healthy", STARTUP_SECONDS="0")
    os_ = launch(slot, tmp_path / "ready.json")
    booted.append(os_)
    response = get(os_.url)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": "1.0.1",
                               "services": {"gateway": "ok", "scheduler": "ok"}}


def test_empty_slot_does_not_boot(tmp_path: Path) -> None:
    slot = tmp_path / "sda3"
    slot.write_bytes(b"\0" * 8192)
    result = subprocess.run(
        [sys.executable, "-m", "reconciler.sim.os", "--slot-file", str(slot), "--port", "0"],
        capture_output=True, text=True, timeout=10,
    )
    assert result.returncode != 0
    assert f"slot {slot} holds no image" in result.stderr


def test_launch_reports_why_a_slot_did_not_boot(tmp_path: Path) -> None:
    with pytest.raises(BootRefused, match="holds no image"):
        launch(tmp_path / "missing-slot", tmp_path / "ready.json")


def test_sigterm_exits_zero(tmp_path: Path) -> None:
    slot = write_slot(tmp_path / "sda3", "1.0.1", BEHAVIOUR="healthy")
    os_ = launch(slot, tmp_path / "ready.json")
    os_.process.send_signal(signal.SIGTERM)
    assert os_.process.wait(timeout=30) == 0


def test_sigterm_during_an_open_connection_still_exits_promptly(tmp_path: Path) -> None:
    slot = write_slot(tmp_path / "sda3", "1.0.1", BEHAVIOUR="healthy")
    os_ = launch(slot, tmp_path / "ready.json")
    with socket.create_connection(("127.0.0.1", os_.port)):  # idle keep-alive client
        os_.process.send_signal(signal.SIGTERM)  # exits while the client still holds on
        assert os_.process.wait(timeout=30) == 0


def test_unknown_behaviour_runs_healthy_and_warns(
        tmp_path: Path, booted: list[SimOsProcess]) -> None:
    slot = write_slot(tmp_path / "sda3", "1.0.1", BEHAVIOUR="dances", STARTUP_SECONDS="0")
    os_ = launch(slot, tmp_path / "ready.json")
    booted.append(os_)
    assert get(os_.url).status_code == 200
    assert "unknown BEHAVIOUR 'dances'" in (tmp_path / "ready.json.log").read_text()


def test_unknown_path_is_404(
        tmp_path: Path, booted: list[SimOsProcess]) -> None:
    slot = write_slot(tmp_path / "sda3", "1.0.1")
    os_ = launch(slot, tmp_path / "ready.json")
    booted.append(os_)
    assert get(f"http://127.0.0.1:{os_.port}/nope").status_code == 404


# The readiness timeline, without a process: health_at is a function of elapsed time.

def test_services_report_starting_during_startup() -> None:
    profile = OsProfile(version="1.0.1", startup_seconds=0.5)
    status, body = health_at(profile, 0.2)
    assert status == 503
    assert body["status"] == "starting"
    assert body["services"] == {"gateway": "starting", "scheduler": "starting"}


def test_gateway_fails_after_startup_forever() -> None:
    profile = OsProfile(version="1.0.1", behaviour="gateway-fails",
                        failing_services={"gateway": "failed to start"})
    for elapsed in (0.6, 60.0, 3600.0):
        status, body = health_at(profile, elapsed)
        assert status == 503
        assert body["services"] == {"gateway": "failed to start", "scheduler": "ok"}


def test_fails_later_is_healthy_then_unhealthy() -> None:
    profile = OsProfile(version="1.0.1", behaviour="fails-later", fails_after_seconds=4.0,
                        failing_services={"scheduler": "crashed"})
    assert health_at(profile, 3.9)[0] == 200
    status, body = health_at(profile, 4.0)
    assert status == 503
    assert body == {"status": "unhealthy", "version": "1.0.1",
                    "services": {"gateway": "ok", "scheduler": "crashed"}}


def test_header_tuning_fields_shape_the_profile(tmp_path: Path) -> None:
    slot = write_slot(tmp_path / "sdb", "3.0.0", BEHAVIOUR="gateway-fails",
                      STARTUP_SECONDS="1.5", FAILS_AFTER_SECONDS="9",
                      FAILING_SERVICES="database:disk full, vault:sealed")
    profile = load_profile(slot)
    assert profile.startup_seconds == 1.5 and profile.fails_after_seconds == 9.0
    assert profile.failing_services == {"database": "disk full", "vault": "sealed"}
    status, body = health_at(profile, 2.0)
    assert list(body["services"]) == ["gateway", "scheduler", "database", "vault"]
    assert body["services"]["gateway"] == "ok" and body["services"]["vault"] == "sealed"


def test_behaviours_have_their_default_failing_services(tmp_path: Path) -> None:
    gateway = load_profile(write_slot(tmp_path / "a", "1", BEHAVIOUR="gateway-fails"))
    later = load_profile(write_slot(tmp_path / "b", "1", BEHAVIOUR="fails-later"))
    healthy = load_profile(write_slot(tmp_path / "c", "1"))
    assert gateway.failing_services == {"gateway": "failed to start"}
    assert later.failing_services == {"scheduler": "crashed"}
    assert (healthy.behaviour, healthy.failing_services) == ("healthy", {})


@pytest.mark.parametrize("fields", [{"STARTUP_SECONDS": "soon"},
                                    {"FAILS_AFTER_SECONDS": "-1"},
                                    {"FAILING_SERVICES": "gateway"}])
def test_nonsense_tuning_fields_refuse_to_boot(tmp_path: Path, fields: dict[str, str]) -> None:
    with pytest.raises(BootRefused, match="etc/kruxos/release"):
        load_profile(write_slot(tmp_path / "sda3", "1.0.1", **fields))


def test_a_booted_roots_release_file_gives_the_same_profile(tmp_path: Path) -> None:
    """The QEMU device's OS reads /etc/kruxos/release of its mounted root, not a slot file."""
    release = tmp_path / "release"
    release.write_text("VERSION=1.0.2\nNAME=KruxOS\nBEHAVIOUR=gateway-fails\n")
    profile = load_release_file(release)
    assert (profile.version, profile.behaviour) == ("1.0.2", "gateway-fails")
    assert health_at(profile, 10.0)[0] == 503
    release.write_text("KRUXOS_RELEASE=1.0.0\n")
    with pytest.raises(BootRefused, match="names no VERSION"):
        load_release_file(release)
    with pytest.raises(BootRefused, match="cannot read"):
        load_release_file(tmp_path / "missing")


def test_the_os_serves_a_release_file_given_on_the_command_line(tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.write_text("VERSION=1.0.1\nBEHAVIOUR=healthy\nSTARTUP_SECONDS=0\n")
    ready = tmp_path / "ready.json"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.sim.os", "--release-file",
                             str(release), "--port", str(port), "--ready-file", str(ready)])
    try:
        wait_for(ready.exists, 20, "the sim OS to listen")
        answer = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)
        assert answer.status_code == 200
        assert answer.json()["version"] == "1.0.1"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
