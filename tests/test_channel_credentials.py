"""Channel credentials from the device config: sent to their origin only, never shown.

The channel is served by a real HTTP server process on 127.0.0.1 that answers
401 unless the request carries the expected ``Authorization`` header
(``require_auth``), reached through a simulated device's port map.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.channelwatch import ChannelWatch
from reconciler.config import Device, load_device
from reconciler.errors import ConfigError
from reconciler.reconcile import Reconciler
from reconciler.sim.device import CHANNEL_PORT, init_device
from reconciler.spec import UpdatePolicy
from reconciler.specfile import load_spec
from reconciler.store import StateStore
from tests.httpserver import ChannelServer

PASSWORD = "Planted-Pw-8f3Kq"
TOKEN = "tok-Planted-5Zr2xYw9"
BASIC = "Basic " + base64.b64encode(f"device-17:{PASSWORD}".encode()).decode()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "dev"
    init_device(directory)
    (directory / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    (directory / "run" / "boot_id").write_text("boot-1\n")
    yield directory


@pytest.fixture
def server(root: Path) -> Iterator[ChannelServer]:
    srv = ChannelServer(root / "channel")
    (root / "run" / "ports.json").write_text(
        json.dumps({CHANNEL_PORT: srv.url.removeprefix("http://")}))
    yield srv
    srv.stop()


def _secret_file(root: Path, name: str, value: str, mode: int = 0o600) -> Path:
    path = root / name
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def _configure(root: Path, credentials: str) -> Device:
    config = root / "device.yaml"
    config.write_text(config.read_text() + "channel:\n  name: stable\n  credentials:\n"
                      + "".join(f"    {line}\n" for line in credentials.splitlines()))
    return load_device(config)


def _basic(root: Path, url: str = f"http://{CHANNEL_PORT}/", mode: int = 0o600) -> Device:
    _secret_file(root, "channel.password", PASSWORD, mode)
    return _configure(root, f"url: {url}\nuser: device-17\npasswordFile: channel.password")


def _auth_log(server: ChannelServer) -> list[bool]:
    """Whether each request carried the expected credentials, oldest first."""
    return [r["authorized"] for r in server.requests() if "authorized" in r]


def _watch(device: Device) -> ChannelWatch:
    return ChannelWatch(device, StateStore(device.data_dir), lambda: datetime.now(UTC),
                        save_trust=False)


def _error(device: Device, url: str = f"http://{CHANNEL_PORT}/") -> str | None:
    watch = _watch(device)
    watch.refresh(_policy(device, url), datetime.now(UTC))
    return watch._error  # noqa: SLF001 - what the next view reports


def _policy(device: Device, url: str) -> UpdatePolicy:
    spec = device.spec_path
    spec.write_text(re.sub(r"url: \S+", f"url: {url}", spec.read_text()))
    return load_spec(spec).policy


def test_basic_credentials_from_the_device_config_open_a_protected_channel(
    root: Path, server: ChannelServer,
) -> None:
    server.set_faults(require_auth=BASIC)
    assert _error(load_device(root / "device.yaml")) is not None  # no credentials: 401
    assert _error(_basic(root)) is None
    assert _auth_log(server) == [False, True]


def test_a_bearer_token_file_is_sent_as_a_bearer_token(
    root: Path, server: ChannelServer,
) -> None:
    server.set_faults(require_auth=f"Bearer {TOKEN}")
    _secret_file(root, "channel.token", TOKEN)
    device = _configure(root, f"url: http://{CHANNEL_PORT}\ntokenFile: channel.token")
    assert _error(device) is None
    assert _auth_log(server) == [True]


def test_credentials_are_never_sent_to_another_origin_than_the_configured_one(
    root: Path, server: ChannelServer,
) -> None:
    elsewhere = ChannelServer(root / "channel")
    try:
        elsewhere.set_faults(require_auth=BASIC)
        device = _basic(root)  # credentials for 127.0.0.1:8080 only
        error = _error(device, url=elsewhere.url + "/")  # a spec pointing elsewhere
        assert error is not None and "HTTP 401" in error
        assert _auth_log(elsewhere) == [False]
    finally:
        elsewhere.stop()


def test_a_secret_file_others_can_read_is_not_used_and_the_error_says_why(
    root: Path, server: ChannelServer,
) -> None:
    server.set_faults(require_auth=BASIC)
    device = _basic(root, mode=0o644)
    error = _error(device)
    assert error is not None
    assert "channel.password is mode 0644; readable by others, so it is not used" in error
    assert "chmod 600" in error and PASSWORD not in error
    assert _auth_log(server) == []  # refused before anything was sent


def test_a_release_is_staged_through_a_channel_behind_basic_auth(
    root: Path, server: ChannelServer,
) -> None:
    # sim init published 1.0.0 and 1.0.1 already
    server.set_faults(require_auth=BASIC)
    device = _basic(root)
    spec = device.spec_path
    spec.write_text(re.sub(r"version: \S+", "version: 1.0.1", spec.read_text(), count=1))
    reconciler = Reconciler(device, rebooter=lambda _: None)
    kinds = [reconciler.run_pass("spec").action.kind for _ in range(3)]  # type: ignore[union-attr]
    assert "stage" in kinds
    assert reconciler.backend.read().marks["B"] == "staged"
    checked = [r for r in server.requests() if "authorized" in r]
    paths = [r["path"] for r in checked if r["authorized"]]
    assert "/metadata.json" in paths and "/kruxos-1.0.1.img" in paths
    assert all(r["authorized"] for r in checked)


@pytest.mark.parametrize(("credentials", "message"), [
    ("url: http://h/\nuser: u\npasswordFile: p\ntokenFile: t",
     "name exactly one of passwordFile (with user) or tokenFile"),
    ("url: http://h/\npasswordFile: p", "passwordFile needs a user"),
    ("url: ftp://h/\ntokenFile: t", "url must be http(s)://host[:port][/path]"),
])
def test_credentials_in_the_device_config_are_checked_when_it_is_loaded(
    root: Path, credentials: str, message: str,
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _configure(root, credentials)


def test_a_channel_name_with_a_slash_is_refused_in_the_device_config(root: Path) -> None:
    config = root / "device.yaml"
    config.write_text(config.read_text() + "channel:\n  name: ../beta\n")
    with pytest.raises(ConfigError, match="channel.name"):
        load_device(config)


def test_an_unknown_group_is_a_config_error_naming_it(root: Path) -> None:
    config = root / "device.yaml"
    config.write_text(config.read_text() + "group: no-such-group-kx\n")
    with pytest.raises(ConfigError, match="group: no group named 'no-such-group-kx'"):
        load_device(config)
    assert os.path.exists(config)


def test_a_failing_fetch_error_carries_no_password_even_before_any_output_path() -> None:
    import httpx

    from reconciler.errors import ChannelUnavailable
    from reconciler.release.client import _get_bounded

    url = "http://u:Pw-Zz91-secret@127.0.0.1:9/metadata.json"
    refusing = httpx.MockTransport(lambda request: httpx.Response(503))
    with pytest.raises(ChannelUnavailable) as caught:
        _get_bounded(url, 5, refusing)
    assert "Pw-Zz91-secret" not in str(caught.value)
    assert "u:***@127.0.0.1:9" in str(caught.value)
