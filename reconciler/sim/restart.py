"""The simulated device's service restart command: ask its simulated OS to restart one service.

A real device runs ``systemctl restart NAME``; the simulated one posts to its
simulated OS (``POST /services/NAME/restart`` on the device's own
``127.0.0.1:7800``, mapped through ``run/ports.json``), which stops just that
service's process and starts it again from the service store's ``current``
artifact (or the image's own service when there is no overlay any more). It
returns once the new process runs, with the OS's answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from reconciler.sim.device import OS_PORT


def main(argv: list[str]) -> int:
    try:
        directory, name = Path(argv[0]), argv[1]
        target = json.loads((directory / "run" / "ports.json").read_text())[OS_PORT]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"sim restart: the device is not running ({exc})", file=sys.stderr)
        return 1
    try:
        answer = httpx.post(f"http://{target}/services/{name}/restart", timeout=30.0,
                            trust_env=False)
    except httpx.HTTPError as exc:
        print(f"sim restart: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(answer.text)
    return 0 if answer.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
