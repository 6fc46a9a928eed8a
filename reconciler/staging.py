"""The stage action: the streaming installer wired to the boot env and the state file.

Fail-safe order (as RAUC installs): fresh verified metadata first; the slot is
marked ``bad`` and its identity destroyed before its first byte is written;
progress goes to the executor (which keeps it in the state file, so status
shows it and a restart resumes); the slot is marked ``staged`` only after the
installer read every byte back from the device, matched the signed SHA-256
and wrote the slot's identity. The trial is not armed here: that happens at
the reboot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from reconciler.boot import Backend
from reconciler.channelwatch import ChannelWatch
from reconciler.config import Device
from reconciler.errors import (
    ChannelUnavailable,
    KruxosError,
    ReleaseError,
    Stopped,
)
from reconciler.logline import log
from reconciler.observed import SlotName
from reconciler.release.identity import Origin
from reconciler.release.installer import InstallProgress, InstallResult, clear_resume, install
from reconciler.spec import UpdatePolicy

RESUME_FILE = "staging.resume.json"

#: Told ``(done, total)``: the bytes of the image's size that are verified, written and
#: recorded in the durable resume point, so what a crash or a power cut keeps (what
#: status shows); ``done`` is ``None`` when writing begins (a resumed staging keeps what
#: it had).
Progress = Callable[[int | None, int], None]


def slot_size(path: Path) -> int:
    """The size of a slot: a block device's capacity or a slot file's length."""
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


class InstallerStager:
    """Stages releases into the other slot with the streaming installer."""

    def __init__(self, device: Device, backend: Backend, channel: ChannelWatch) -> None:
        self.device = device
        self.backend = backend
        self.channel = channel

    def stage(self, version: str, slot: SlotName, policy: UpdatePolicy,
              should_stop: Callable[[], bool], progress: Progress) -> str:
        """Stage ``version`` into ``slot``; raise on refusal, TemporaryError when stopped.

        ``progress(done, total)`` is told how far the verified bytes got (throttled)."""
        report = _Reporter(progress, version, slot, 0)
        try:
            result = self._install(version, slot, policy, should_stop, report)
        except ReleaseError as exc:
            raise ReleaseError(f"refused to stage {version} into slot {slot}: {exc}; "
                               f"slot {slot} is not staged (marked {self._mark(slot)})") from exc
        except ChannelUnavailable as exc:  # past the installer's resumes: the next pass goes on
            raise ChannelUnavailable(f"staging {version} into slot {slot} did not finish: "
                                     f"{exc}", exc.delay) from exc
        if not result.complete:
            raise Stopped(f"staging of {version} stopped at block {result.next_block} of "
                                 f"{result.blocks}; it resumes there", delay=1.0)
        self.backend.set_mark(slot, "staged")
        clear_resume(self.device.data_dir / RESUME_FILE)  # only now: see installer._finish
        return f"staged {version} into slot {slot}: {result.message}"

    def _mark(self, slot: SlotName) -> str:
        try:
            return str(self.backend.read().marks.get(slot, "unknown"))
        except KruxosError:
            return "unknown: the boot environment cannot be read"

    def _install(self, version: str, slot: SlotName, policy: UpdatePolicy,
                 should_stop: Callable[[], bool], report: _Reporter) -> InstallResult:
        """Fresh verified metadata, then the installer; the booted slot comes from the kernel.

        The booted slot is read from the kernel command line, not inferred from
        ``slot``: a caller that names the booted slot by mistake is refused.
        """
        release = self.channel.release(policy, version)
        meta = self.channel.verified
        origin = Origin(meta.channel if meta else self.device.channel_name,
                        meta.serial if meta else 0)
        path = self.device.slot_paths[slot]
        report.total = release.size

        def before_first_write() -> None:
            self.backend.set_mark(slot, "bad")
            report.start()

        return install(
            release, self.device.map_url(policy.spec.channel.url), path, slot_size(path),
            origin=origin, booted_slot_path=self.device.slot_paths[self.device.booted_slot()],
            before_first_write=before_first_write, progress=report,
            should_stop=should_stop, resume_file=self.device.data_dir / RESUME_FILE,
            transport=self.channel.transport)


class _Reporter:
    """Passes the staging progress on (throttled) and logs milestones."""

    def __init__(self, progress: Progress, version: str, slot: SlotName, total: int) -> None:
        self.progress, self.version, self.slot, self.total = progress, version, slot, total
        self._last_write = 0.0
        self._last_quarter = -1

    def start(self) -> None:
        self.progress(None, self.total)

    def __call__(self, event: InstallProgress) -> None:
        now = time.monotonic()
        if now - self._last_write >= 0.5 or event.phase != "download":
            self._save(event.durable)
            self._last_write = now
        quarter = (4 * event.written) // max(1, self.total)
        if quarter != self._last_quarter and event.phase == "download":
            self._last_quarter = quarter
            log(f"staging {self.version} into slot {self.slot}: "
                f"{event.written}/{self.total} bytes verified and written")

    def _save(self, done: int) -> None:
        self.progress(done, self.total)
