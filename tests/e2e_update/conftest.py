"""Fixtures for the ``kruxos update`` commands, driven as real subprocesses.

The simulated device and its ``sim run`` process come from ``tests/e2e/conftest.py``
(one definition of a device for every suite). What is added
here is what a person at the device does: answer a prompt, press Ctrl-C, tamper
with the channel on disk, give the spec a maintenance window.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.cli_contract import check as contract_check
from tests.device import KRUXOS, REPO, SimDevice, device, make_device
from tests.waiting import holds_for, wait_for

#: The seed's release notes of 1.0.1, as ``kruxos sim init`` publishes them.
SEED_CHANGES = [
    "- Fixed rate limiter edge case with concurrent agents",
    "- Improved Gmail sync performance",
    "- Added filesystem.copy capability",
]


def run_cli(dev: SimDevice, *args: str, stdin: str = "",
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``kruxos ARGS`` with ``stdin`` fed (a person typing), any exit code."""
    result = subprocess.run([*KRUXOS, *args], cwd=REPO, env=dev.env, input=stdin,
                            capture_output=True, text=True, timeout=timeout)
    contract_check(list(args), result)
    return result


def run_at_terminal(dev: SimDevice, *args: str, typed: str,
                    timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``kruxos ARGS`` with a terminal (a pseudo-terminal) on stdin, on which ``typed`` is
    typed ahead; stdout and stderr are pipes, as in a transcript."""
    main, child = pty.openpty()
    try:
        os.write(main, typed.encode())
        result = subprocess.run([*KRUXOS, *args], cwd=REPO, env=dev.env, stdin=child,
                                capture_output=True, text=True, timeout=timeout)
        contract_check(list(args), result)
    finally:
        os.close(child)
        os.close(main)
    return result


def interrupt_at_prompt(dev: SimDevice, *args: str, prompt: str,
                        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``kruxos ARGS`` with a terminal on stdin; once ``prompt`` is on its stdout, Ctrl-C
    (SIGINT) while it waits for the answer."""
    main, child = pty.openpty()
    try:
        proc = subprocess.Popen([*KRUXOS, *args], cwd=REPO, env=dev.env, stdin=child,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=_as_at_a_terminal)
        out: list[bytes] = []
        err: list[bytes] = []
        readers = [threading.Thread(target=_read_into, args=(stream, into), daemon=True)
                   for stream, into in ((proc.stdout, out), (proc.stderr, err))]
        for reader in readers:
            reader.start()
        try:
            wait_for(lambda: prompt.encode() in b"".join(out), timeout, f"the prompt {prompt!r}",
                     context=lambda: b"".join(out + err).decode(errors="replace"))
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout)
        finally:
            proc.kill()
        for reader in readers:
            reader.join(timeout)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        result = subprocess.CompletedProcess([*KRUXOS, *args], proc.returncode,
                                             b"".join(out).decode(), b"".join(err).decode())
        contract_check(list(args), result)
    finally:
        os.close(child)
        os.close(main)
    return result


def _read_into(stream: Any, chunks: list[bytes]) -> None:
    """Each piece of a stream as it comes (a prompt ends with no newline)."""
    while piece := os.read(stream.fileno(), 4096):
        chunks.append(piece)


def _as_at_a_terminal() -> None:
    """Ctrl-C works as at a terminal: a suite started in the background (``make test &``)
    has SIGINT ignored, which its children would inherit and keep."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(dev: SimDevice, *args: str) -> subprocess.Popen[str]:
    """``kruxos ARGS`` in the background (to be interrupted)."""
    return subprocess.Popen([*KRUXOS, *args], cwd=REPO, env=dev.env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_as_at_a_terminal)


def interrupt(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    """Press Ctrl-C (SIGINT to the command) and collect what it printed."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_staging_started(dev: SimDevice, version: str, timeout: float = 60,
                         blocks: int = 1) -> None:
    """Until the state file shows ``blocks`` (1 MiB each) of ``version`` written."""
    def started() -> bool:
        staging = dev.state().get("staging") or {}
        return staging.get("version") == version and int(staging.get("done", 0)) >= blocks << 20
    dev.wait_for(started, timeout, f"the staging of {version} to start", every=0.05)


def events(dev: SimDevice, action: str) -> list[dict[str, Any]]:
    """Audit records of a person's requests and override ends, of one action.

    They are decisions of the reconciler (taken one per pass, recorded before
    their state is written), so the decision record is the one to read.
    """
    return [r for r in dev.audit_file_records() if r["kind"] in ("event", "decision")
            and r["action"] == action]


def decisions_with_outcomes(dev: SimDevice,
                            action: str) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each decision of ``action`` with its outcome record (``None`` until it ran)."""
    records = dev.audit_file_records()
    outcomes = {r["decision"]: r for r in records if r["kind"] == "outcome"}
    return [(r, outcomes.get(r["seq"])) for r in records
            if r["kind"] == "decision" and r["action"] == action]


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte of a file on disk (what an attacker or a bad disk does)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def closed_window_text(dev: SimDevice) -> str:
    """The device's spec with one maintenance window that is closed now (three days away)."""
    day = (datetime.now(UTC) + timedelta(days=3)).strftime("%a").lower()
    return dev.spec.read_text().rstrip("\n") + (
        f"\n  rollout:\n    windows:\n      - days: [{day}]\n        start: \"03:00\"\n"
        "        duration: 1h\n        timezone: UTC\n")


def set_spec_block(dev: SimDevice, block: str) -> None:
    """Append a YAML block under ``spec:`` (two-space indented lines)."""
    dev.edit_spec(text=dev.spec.read_text().rstrip("\n") + "\n" + block.rstrip("\n") + "\n")


def json_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON document a ``--json`` command printed on stdout."""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    value = json.loads(lines[0])
    assert isinstance(value, dict)
    return value


def steady_for(dev: SimDevice, seconds: float, check: Callable[[], bool]) -> None:
    """Assert ``check`` holds at every look for ``seconds``."""
    holds_for(check, seconds, "the steady state", every=0.25, context=dev.diagnostics)


__all__ = ["SimDevice", "device", "make_device"]
