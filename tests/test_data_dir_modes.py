"""Files under the data dir are 0640 and directories 0750, in the configured group,
whatever the umask; a channel's published files stay readable by a web server."""

from __future__ import annotations

import grp
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.config import load_device
from reconciler.durable import atomic_write, set_data_policy
from reconciler.reconcile import Reconciler
from reconciler.release.channel import init_channel
from reconciler.sim.device import CHANNEL_PORT, init_device
from reconciler.store import data_dir_lock
from tests.httpserver import ChannelServer

GROUP = "users"


@pytest.fixture(params=[0o000, 0o077], ids=["umask-000", "umask-077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)
        set_data_policy(Path("/nonexistent"), None)


def _modes(root: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(root))] = (stat.S_IMODE(info.st_mode), info.st_gid)
    return found


def test_a_staging_pass_creates_every_data_file_0640_and_dir_0750_in_the_group(
    tmp_path: Path, umask: int,
) -> None:
    root = tmp_path / "dev"
    init_device(root)
    (root / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    (root / "run" / "boot_id").write_text("boot-1\n")
    config = root / "device.yaml"
    config.write_text(config.read_text() + f"group: {GROUP}\n")
    spec = root / "spec.yaml"
    spec.write_text(re.sub(r"version: \S+", "version: 1.0.1", spec.read_text(), count=1))
    server = ChannelServer(root / "channel")
    try:
        (root / "run" / "ports.json").write_text(
            json.dumps({CHANNEL_PORT: server.url.removeprefix("http://")}))
        device = load_device(config)
        with data_dir_lock(device.data_dir, "test"):  # as the daemon holds it
            reconciler = Reconciler(device, rebooter=lambda _: None)
            for _ in range(3):
                reconciler.run_pass("spec")
    finally:
        server.stop()
    gid = grp.getgrnam(GROUP).gr_gid
    modes = _modes(root / "data")
    # the device layer is the provisioner's file (written by sim init), not the daemon's
    assert modes.pop("device.yaml")[0] == 0o640
    assert {"state.json", "channel-trust.json", "audit"} <= set(modes), sorted(modes)
    assert any(name.startswith("audit/audit-") for name in modes)
    expected = {name: (0o750 if (root / "data" / name).is_dir() else 0o640, gid)
                for name in modes}
    expected["spec.last-good.yaml"] = (0o600, gid)  # a spec may carry a URL's password
    wrong = {name: (oct(mode), group) for name, (mode, group) in modes.items()
             if (mode, group) != expected[name]}
    assert wrong == {}


def test_files_outside_the_data_dir_keep_their_group_but_get_the_exact_mode(
    tmp_path: Path, umask: int,
) -> None:
    set_data_policy(tmp_path / "data", grp.getgrnam(GROUP).gr_gid)
    atomic_write(tmp_path / "elsewhere" / "f", b"x")
    info = (tmp_path / "elsewhere" / "f").stat()
    assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == os.getegid()
    assert stat.S_IMODE((tmp_path / "elsewhere").stat().st_mode) == 0o750


def test_a_published_channel_stays_readable_by_any_web_server_user(
    tmp_path: Path, umask: int,
) -> None:
    init_channel(tmp_path / "pub" / "stable", "stable")
    assert stat.S_IMODE((tmp_path / "pub" / "stable" / "draft.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "pub" / "stable").stat().st_mode) == 0o755
