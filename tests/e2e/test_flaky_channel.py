"""A device staging from a channel server that cuts connections and answers 503, end to end.

The channel is served by the tests' own server (``tests/httpserver.py``) with a
plan of faults drawn from a seed; the device's spec points at it. The device
must converge within one stage action, its audit trail must say how many
resumes it took, and the server must have sent at most the image and one
block per cut connection. Stalls are covered by the installer's tests: the
device waits 30 s on a silent peer, too long for this tier.
"""

from __future__ import annotations

import re
from typing import Any

from reconciler.release.installer import describe_faults
from tests.device import SimDevice
from tests.httpserver import ChannelServer, fault_plan

MIB = 1 << 20
SIZE_MB = 8


def _kinds(requests: list[dict[str, Any]]) -> list[str]:
    names = (("cut at", "cut"), ("status 503", "http 503"))
    return [kind for r in requests for prefix, kind in names if r["fault"].startswith(prefix)]


def test_a_device_converges_through_a_flaky_channel_and_the_audit_counts_the_resumes(
        device: SimDevice) -> None:
    device.cli("sim", "publish", str(device.dir), "1.0.2", "--size-mb", str(SIZE_MB))
    size = (device.dir / "channel" / "kruxos-1.0.2.img").stat().st_size
    server = ChannelServer(device.dir / "channel")
    try:
        # 4 faults, cuts within the first 1.5 MiB of a response: each one fires
        server.set_faults(plan=fault_plan(seed=5, faults=4, most=3 * MIB // 2,
                                          kinds=("cut", "status")))
        device.start()
        device.wait_status("1.0.0", "CONFIRMED", timeout=60)
        spec = re.sub(r"url: \S+", f"url: {server.url}/", device.spec.read_text())
        device.edit_spec(text=re.sub(r"(?m)^  version: .*$", "  version: 1.0.2", spec))
        device.wait_status("1.0.2", "CONFIRMED", timeout=120)
        requests = [r for r in server.requests() if r["path"].endswith(".img")]
    finally:
        server.stop()

    faults = _kinds(requests)
    assert len(faults) == 4, requests
    stages = [r for r in device.audit_records() if r["action"] == "stage"]
    assert [r["kind"] for r in stages] == ["decision", "outcome"], stages  # one stage action
    outcome = stages[1]["outcome"]
    assert outcome.startswith("ok: staged 1.0.2 into slot B: "), outcome
    assert outcome.endswith(f" after 4 resumes ({describe_faults(faults)})"), outcome
    cuts = faults.count("cut")
    assert sum(r["sent"] for r in requests) <= size + cuts * MIB, requests
    assert device.cli("audit", "verify").returncode == 0
