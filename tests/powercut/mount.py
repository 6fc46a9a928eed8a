"""Driving the power-cut filesystem from a test: mount, cut, materialize, unmount.

:class:`PowercutMount` starts ``python -m tests.powercut.fs`` as a process of
its own over a backing directory and waits until the mount is there; ``cut``
stops the power (every operation fails from then on), ``materialize`` writes
what was durable into a new directory, and ``stop`` unmounts and ends the
process, whatever state it is in. The ``powercut`` fixture stops every mount
it made, so a failed test leaves no mount behind in the temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.powercut import LIBFUSE3
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
#: What a test using the filesystem declares with ``@pytest.mark.needs_tool``.
TOOLS = (LIBFUSE3, "fusermount3")


class PowercutMount:
    """One power-cut filesystem over ``backing``, mounted at ``mountpoint``."""

    def __init__(self, backing: Path, mountpoint: Path, work: Path) -> None:
        self.backing, self.mountpoint, self.work = backing, mountpoint, work
        self.control = work / "control.sock"
        self.log = work / "fs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PowercutMount:
        """Mount (a new model: everything in ``backing`` now is durable) and wait for it."""
        assert self.proc is None, "already mounted"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        shadow = self.work / "shadow"
        if shadow.exists():
            subprocess.run(["rm", "-rf", str(shadow)], check=True)
        self.control.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.powercut.fs", str(self.backing),
                 str(self.mountpoint), "--shadow", str(shadow), "--control", str(self.control)],
                cwd=REPO, env=dict(os.environ, FUSE_LIBRARY_PATH=LIBFUSE3), stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: mounted(self.mountpoint) and self.control.exists(), 30,
                 f"the power-cut filesystem to mount at {self.mountpoint}",
                 context=self.diagnostics, abort=self._exited)
        return self

    def _exited(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"the power-cut filesystem exited ({self.proc.returncode})"
        return None

    def diagnostics(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n--- power-cut filesystem log (tail) ---\n" + "\n".join(text.splitlines()[-30:])

    def request(self, **command: Any) -> dict[str, Any]:
        """One control request; an answer with ``error`` fails the test."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(str(self.control))
            with sock.makefile("rwb") as stream:
                stream.write(json.dumps(command).encode() + b"\n")
                stream.flush()
                answer: dict[str, Any] = json.loads(stream.readline())
        if "error" in answer:
            raise AssertionError(f"power-cut filesystem: {answer['error']}{self.diagnostics()}")
        return answer

    def status(self) -> dict[str, Any]:
        return self.request(cmd="status")

    def arm(self, after: int, writes_under: str | None = None) -> None:
        """Cut when the ``after``-th changing operation from now arrives, or with
        ``writes_under`` right after the ``after``-th write under that path (before the
        next changing operation)."""
        self.request(cmd="arm", after=after, writes_under=writes_under)

    def cut(self) -> dict[str, Any]:
        """Cut the power now."""
        return self.request(cmd="cut")

    def materialize(self, out: Path, seed: int) -> dict[str, Any]:
        """After a cut: the durable tree, torn as ``seed`` says, written into ``out``."""
        return self.request(cmd="materialize", out=str(out), seed=seed)

    def stop(self) -> None:
        """Unmount and end the process (killing it if it does not end)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self._unmount()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._unmount()
        assert not mounted(self.mountpoint), f"{self.mountpoint} is still mounted"

    def _unmount(self) -> None:
        if mounted(self.mountpoint):
            result = subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                                    capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, f"fusermount3 -u: {result.stderr}"


def mounted(path: Path) -> bool:
    """Whether a filesystem is mounted at ``path`` (also one whose process died, where
    ``os.path.ismount`` says no because ``stat`` fails)."""
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@pytest.fixture
def powercut(tmp_path: Path) -> Iterator[Callable[..., PowercutMount]]:
    """Factory of mounted power-cut filesystems (``make(backing, mountpoint)``), all
    unmounted in teardown."""
    made: list[PowercutMount] = []

    def make(backing: Path, mountpoint: Path, work: Path | None = None) -> PowercutMount:
        work = work or tmp_path / f"powercut-{len(made)}"
        work.mkdir(parents=True, exist_ok=True)
        mount = PowercutMount(backing, mountpoint, work)
        made.append(mount)
        return mount.start()

    yield make
    for mount in made:
        mount.stop()
