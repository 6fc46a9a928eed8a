"""One service of the simulated OS, as its own process: it learns what it is from its artifact.

Run as ``python -m reconciler.sim.service --artifact PATH --status-file FILE``
by the simulated OS (:mod:`reconciler.sim.os`) for a service that has an
overlay in the service store. Like a slot's behaviour from the slot's bytes,
the service's behaviour comes only from the artifact's bytes, a release file
of ``KEY=VALUE`` lines (:func:`artifact_text`):

- ``BEHAVIOUR=healthy``        ready after ``STARTUP_SECONDS`` (0.3): writes
                               ``{"state": "ok"}`` to its status file and runs
                               until SIGTERM
- ``BEHAVIOUR=gateway-fails``  (or ``fails``) never ready: writes
                               ``{"state": "failed to start"}`` and exits 1

It ends with the simulated OS (it watches its parent: the OS starts it from
a request's thread, so a parent-death signal, which follows the thread,
would end it as soon as that request is answered). The simulated OS turns
the status file and the process's life into the service's entry in the
health JSON's ``services`` map.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from reconciler.durable import atomic_write_json

FAILING = ("gateway-fails", "fails")


def artifact_text(name: str, version: str, behaviour: str = "healthy") -> bytes:
    """The bytes of a simulated service artifact (what ``sim publish --service`` ships)."""
    return f"SERVICE={name}\nVERSION={version}\nBEHAVIOUR={behaviour}\n".encode()


def read_artifact(path: Path) -> dict[str, str]:
    """The artifact's fields; an artifact that is no release file has none (it fails)."""
    fields = {}
    for line in path.read_bytes()[:4096].decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.sim.service")
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--status-file", type=Path, required=True)
    args = parser.parse_args(argv)
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fields = read_artifact(args.artifact)
    version = fields.get("VERSION", "?")
    if fields.get("BEHAVIOUR", "") in FAILING or "SERVICE" not in fields:
        atomic_write_json(args.status_file, {"state": "failed to start", "version": version,
                                             "pid": os.getpid()})
        print(f"sim service: {args.artifact}: failed to start", file=sys.stderr)
        return 1
    try:
        startup = max(0.0, float(fields.get("STARTUP_SECONDS", "0.3")))
    except ValueError:
        startup = 0.3
    if stop.wait(startup):  # the service's own start-up time, not a test's wait
        return 0
    atomic_write_json(args.status_file, {"state": "ok", "version": version, "pid": os.getpid()})
    while not stop.wait(0.5):
        if os.getppid() != parent:  # the simulated OS is gone: so is the service
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
