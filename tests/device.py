"""A simulated device made and driven only through the real CLI (the end-to-end fixtures).

Every test gets its own device directory under ``tmp_path`` (``kruxos sim init``).
``device.start()`` runs ``kruxos sim run DIR`` as a subprocess in its own
process group; the teardown always stops it (SIGTERM, then SIGKILL) and kills
any process still carrying this device's config in its environment, so a
failed test never leaves a daemon behind. Failure messages carry the tail of
the device console and of the daemon log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from reconciler.sim.image import build_sim_image
from tests.cli_contract import check as contract_check
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
KRUXOS = [sys.executable, "-m", "reconciler.cli.main"]

T = TypeVar("T")


class SimDevice:
    """One simulated device directory and, when started, its ``sim run`` process."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = directory / "device.yaml"
        self.spec = directory / "spec.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.console = directory.parent / f"{directory.name}-console.log"
        self.env = dict(os.environ, KRUXOS_CONFIG=str(self.config), PYTHONUNBUFFERED="1")
        self.env.pop("FAKETIME", None)

    # ---- the CLI -----------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``kruxos ARGS`` against this device; ``check`` asserts exit 0."""
        result = subprocess.run([*KRUXOS, *args], cwd=REPO, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        contract_check(list(args), result)
        if check and result.returncode != 0:
            raise AssertionError(f"kruxos {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}"
                                 f"{self.diagnostics()}")
        return result

    def status_json(self) -> dict[str, Any]:
        """``kruxos update status --json``."""
        doc: dict[str, Any] = json.loads(self.cli("update", "status", "--json").stdout)
        return doc

    def status_lines(self) -> list[str]:
        """``kruxos update status``, one entry per line."""
        return self.cli("update", "status").stdout.splitlines()

    def audit_records(self) -> list[dict[str, Any]]:
        """``kruxos audit list --json``: every record, oldest first."""
        out = self.cli("audit", "list", "--json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def audit_file_records(self) -> list[dict[str, Any]]:
        """The audit trail read straight from its files (fast, for tight polling)."""
        records = []
        for path in sorted((self.dir / "data" / "audit").glob("audit-*.jsonl")):
            for line in path.read_bytes().splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass  # a line being written right now
        return records

    def decisions(self, action: str | None = None) -> list[dict[str, Any]]:
        """Decision records (not outcomes, not events), optionally of one action."""
        return [r for r in self.audit_records() if r["kind"] == "decision"
                and (action is None or r["action"] == action)]

    def publish(self, version: str, behaviour: str = "healthy") -> None:
        """``kruxos sim publish DIR VERSION --behaviour B``."""
        self.cli("sim", "publish", str(self.dir), version, "--behaviour", behaviour)

    def publish_image(self, version: str, **fields: str) -> None:
        """Build an image with chosen release-file fields; publish it with ``kruxos release``."""
        image = self.dir.parent / f"{self.dir.name}-kruxos-{version}.img"
        build_sim_image(image, version, size=256 << 10, fields=fields)
        channel = str(self.dir / "channel")
        self.cli("release", "add", channel, str(image), "--version", version)
        self.cli("release", "sign", channel, "--key", str(self.dir / "keys" / "release.key"))

    def resign(self, expires: str) -> None:
        """Sign the channel again so its metadata stays valid for ``expires`` (e.g. ``800d``)."""
        self.cli("release", "sign", str(self.dir / "channel"), "--key",
                 str(self.dir / "keys" / "release.key"), "--expires", expires)

    # ---- files -------------------------------------------------------------------------

    def edit_spec(self, version: str | None = None, text: str | None = None,
                  **spec_fields: str) -> None:
        """Rewrite spec.yaml atomically: a new ``version``, extra lines under ``spec:``,
        or a whole new ``text``."""
        if text is None:
            text = self.spec.read_text()
            if version is not None:
                text = re.sub(r"(?m)^  version: .*$", f"  version: {version}", text)
            for key, value in spec_fields.items():
                text = text.rstrip("\n") + f"\n  {key}: {value}\n"
        tmp = self.spec.with_name(".spec.yaml.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.spec)

    def set_config(self, **values: str) -> None:
        """Set top-level keys of device.yaml (e.g. ``resync="2s"``)."""
        text = self.config.read_text()
        for key, value in values.items():
            text, n = re.subn(rf"(?m)^{key}: .*$", f"{key}: {value}", text)
            if n == 0:
                text += f"{key}: {value}\n"
        self.config.write_text(text)

    def state(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.dir / "data" / "state.json").read_text())
        return doc

    def audit_head(self) -> dict[str, Any]:
        """The head of the audit chain and its repeat counter (``audit/head.json``)."""
        doc: dict[str, Any] = json.loads(
            (self.dir / "data" / "audit" / "head.json").read_text())
        return doc

    # ---- running -----------------------------------------------------------------------

    def start(self, *extra: str, faketime: str | None = None) -> None:
        """``kruxos sim run DIR`` in the background, console to a log file; waits for the boot."""
        self.start_without_waiting(*extra, faketime=faketime)
        self.wait_for(lambda: (self.dir / "run" / "ports.json").exists()
                      and self.daemon_pid() is not None, 60, "the device to boot")

    def start_without_waiting(self, *extra: str, faketime: str | None = None) -> None:
        """``kruxos sim run DIR`` in the background, console to a log file."""
        assert self.proc is None, "device already running"
        cmd = [*KRUXOS, "sim", "run", str(self.dir), *extra]
        if faketime is not None:
            cmd = ["faketime", faketime, *cmd]
        with open(self.console, "ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if faketime is not None:
            self._share_fake_clock()

    def _share_fake_clock(self) -> None:
        """Run later CLI calls on the same fake clock as the device (faketime's offset)."""
        def offset() -> dict[str, str]:
            for pid in self.processes():
                raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
                if "FAKETIME" in env:
                    return {k: env[k] for k in ("LD_PRELOAD", "FAKETIME") if k in env}
            return {}
        self.env.update(self.wait_for(offset, 20, "faketime to set up the clock", every=0.02))

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM ``sim run`` and wait; returns its exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            for pid in self._sim_run_pids(proc.pid):
                os.kill(pid, signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(
                f"sim run did not stop within {timeout}s{self.diagnostics()}") from None

    @staticmethod
    def _sim_run_pids(pid: int) -> list[int]:
        """``sim run`` itself: ``pid``, or its child when ``faketime`` wraps it (the
        wrapper passes no signal on, and cleans up its shared clock only on a normal exit)."""
        try:
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return [pid]
        return [int(c) for c in children] if exe.endswith(b"faketime") else [pid]

    def kill_leftovers(self) -> None:
        """Kill (by pid) any process still started for this device, e.g. after a crash."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def processes(self) -> list[int]:
        """Pids of live processes whose environment names this device's config."""
        marker = f"KRUXOS_CONFIG={self.config}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if marker in env and stat.rsplit(")", 1)[-1].split()[0] != "Z":
                found.append(int(entry.name))
        return found

    def daemon_pid(self) -> int | None:
        """Pid of the running ``kruxos daemon`` of this device, if any."""
        for pid in self.processes():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"daemon" in cmd and b"reconciler.cli.main" in cmd:
                return pid
        return None

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def boots(self) -> list[str]:
        """The ``boot #N: ...`` lines of the device console."""
        return [line for line in self.console_text().splitlines() if "] boot #" in line]

    def diagnostics(self) -> str:
        log = self.dir / "run" / "daemon.log"
        daemon = log.read_text(errors="replace") if log.exists() else ""
        return (f"\n--- sim run console (tail) ---\n{_tail(self.console_text())}"
                f"\n--- daemon.log (tail) ---\n{_tail(daemon)}")

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str,
                 every: float = 0.1) -> T:
        """Poll ``predicate`` until it is truthy; fail naming ``what`` with diagnostics.

        Gives up early when ``sim run`` exits, since nothing can change after that."""
        def gone() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                return f"sim run exited ({self.proc.returncode})"
            return None
        return wait_for(predicate, timeout, what, every=every, context=self.diagnostics,
                        abort=gone)

    def wait_status(self, version: str, boot_status: str, timeout: float = 30) -> dict[str, Any]:
        """Wait until the device runs ``version`` with ``boot_status``."""
        def reached() -> dict[str, Any] | None:
            doc = self.status_json()
            slot = doc["slots"][doc["booted"]]
            ok = slot["version"] == version and doc["boot_status"] == boot_status
            return doc if ok else None
        return self.wait_for(reached, timeout, f"{version} with boot status {boot_status!r}",
                             every=0.3)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[Callable[..., SimDevice]]:
    """Factory of simulated devices (``kruxos sim init``), stopped in teardown."""
    made: list[SimDevice] = []

    def make(name: str = "dev", **config: str) -> SimDevice:
        directory = tmp_path / name
        device = SimDevice(directory)
        out = device.cli("sim", "init", str(directory)).stdout
        assert f"export KRUXOS_CONFIG={device.config}" in out
        if config:
            device.set_config(**config)
        made.append(device)
        return device

    yield make
    for device in made:
        try:
            device.stop()
        finally:
            device.kill_leftovers()


@pytest.fixture
def device(make_device: Callable[..., SimDevice]) -> SimDevice:
    """A fresh simulated device (not started)."""
    return make_device()


@contextlib.contextmanager
def data_dir_lock_held(data_dir: Path, content: str) -> Iterator[None]:
    """Hold a device's data-dir lock here, its file saying ``content`` (what a holder writes:
    ``kruxos daemon (pid 42)\\n``; empty: a holder that has not named itself). The lock is on
    a descriptor of its own, so it conflicts with this process's other opens too."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write(content)
        held.flush()
        yield
