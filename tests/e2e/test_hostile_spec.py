"""A running daemon meets hostile specs: each is refused once, in a short record.

The findings this pins down: ``http://[::1`` made every pass raise, 5,000
nested ``[`` crashed the daemon without a record, a billion-laughs alias
became a 312 MB audit record, credentials in the URL were written in clear,
and a 9.6 MB spec took 75 s per read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.device import SimDevice

LAUGHS = "".join(
    f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}" if i else '"lol"'] * 9) + "]\n" for i in range(10))


def _hostile(good: str) -> dict[str, tuple[str, str]]:
    """name -> (spec text, words its rejection must carry)."""
    url = next(line.split("url: ", 1)[1] for line in good.splitlines() if "url: " in line)
    return {
        "unclosed IPv6 host": (good.replace(url, '"http://[::1"', 1),
                               "spec.channel.url: 'http://[::1' is not a valid URL"),
        "5,000 nested brackets": (good.replace("version: 1.0.0", "version: "
                                               + "[" * 5000 + "]" * 5000),
                                  "collections are nested more than 32 deep"),
        "billion laughs": (LAUGHS + good.replace("version: 1.0.0", "version: *l9"),
                           "with its aliases expanded"),
        "credentials in the URL": (good.replace("http://", "http://ops:s3cr3t-pw@", 1),
                                   "carries credentials"),
        "control characters in the name": (
            good.replace("name: sim-device", 'name: "gw\\e[31m\\nforged"', 1),
            "contains the control character"),
        "a YAML 1.1 boolean": (good.rstrip("\n") + "\n  suspend: off\n",
                               "'off' is not a boolean in YAML 1.2: write false"),
        "9.6 MB": (good + "# " + "x" * 9_600_000 + "\n", "the spec is larger than 256 KiB"),
    }


def _idle(device: SimDevice) -> None:
    device.wait_for(lambda: [r for r in device.audit_file_records() if r["kind"] == "decision"],
                    15, "the first decision")


def test_a_running_daemon_refuses_each_hostile_spec_once_and_keeps_working(
        make_device: Callable[..., SimDevice]) -> None:
    device = make_device(resync="1s")
    device.start()
    _idle(device)
    daemon = device.daemon_pid()
    good = device.spec.read_text()
    hostile = _hostile(good)

    for name, (text, words) in hostile.items():
        seen = len(device.audit_file_records())
        device.edit_spec(text=text)

        def rejected(seen: int = seen, words: str = words) -> list[dict[str, Any]]:
            return [r for r in device.audit_file_records()[seen:]
                    if r["action"] == "spec-rejected" and words in r["reason"]]
        record = device.wait_for(rejected, 30, f"spec-rejected for {name}")[0]
        line = json.dumps(record)
        assert len(line) < 2000, (name, len(line))
        assert "s3cr3t" not in line and "\\u001b" not in line, (name, line)
        assert device.daemon_pid() == daemon, f"the daemon restarted after {name}"

    log = (device.dir / "run" / "daemon.log").read_text()
    assert "Traceback" not in log and "s3cr3t" not in log
    audit_bytes = sum(p.stat().st_size for p in (device.dir / "data" / "audit").glob("*"))
    assert audit_bytes < 200_000, audit_bytes

    # each bad revision is recorded once, and the device still follows a good spec
    rejections = [r for r in device.audit_file_records() if r["action"] == "spec-rejected"]
    assert len(rejections) == len(hostile), [r["reason"][:80] for r in rejections]
    device.edit_spec(text=good.replace("version: 1.0.0", "version: 1.0.1"))
    device.wait_status("1.0.1", "CONFIRMED", timeout=60)
