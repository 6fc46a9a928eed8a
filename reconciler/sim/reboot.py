"""The simulated device's reboot command: ask ``kruxos sim run`` to reboot.

A real device runs ``systemctl reboot``; the simulated one signals its
supervisor, which ends the simulated OS and the daemon and boots again through
the bootloader logic. Like a real reboot command, this returns at once.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    directory = Path(argv[0])
    try:
        pid = int((directory / "run" / "sim.pid").read_text())
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError, IndexError) as exc:
        print(f"sim reboot: the device in {directory} is not running ({exc})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
