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

``DATA_DIR=gateway`` (the artifact's signed ``data_dir``): on start, before
it is ready or fails, the service migrates its data under ``--data-root``:
it writes its version into ``DATA_DIR/schema`` and appends a line to
``DATA_DIR/journal``, as a new version that upgrades its data would.

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

from reconciler.durable import atomic_write, atomic_write_json

FAILING = ("gateway-fails", "fails")


def artifact_text(name: str, version: str, behaviour: str = "healthy",
                  data_dir: str | None = None) -> bytes:
    """The bytes of a simulated service artifact (what ``sim publish --service`` ships)."""
    text = f"SERVICE={name}\nVERSION={version}\nBEHAVIOUR={behaviour}\n"
    return (text + (f"DATA_DIR={data_dir}\n" if data_dir else "")).encode()


def migrate(data_root: Path, data_dir: str, version: str) -> None:
    """What a new version does to its data on start, once: the schema is its own now (a
    version that finds its own schema changes nothing)."""
    directory = data_root / data_dir
    directory.mkdir(parents=True, exist_ok=True)
    schema = directory / "schema"
    if schema.is_file() and schema.read_text("utf-8").strip() == version:
        return
    atomic_write(directory / "schema", f"{version}\n".encode())
    with open(directory / "journal", "a", encoding="utf-8") as journal:
        journal.write(f"{version} started\n")
        journal.flush()
        os.fsync(journal.fileno())
    print(f"sim service: migrated {data_dir} to {version}", file=sys.stderr, flush=True)


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
    parser.add_argument("--data-root", type=Path)
    args = parser.parse_args(argv)
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fields = read_artifact(args.artifact)
    version = fields.get("VERSION", "?")
    if fields.get("DATA_DIR") and args.data_root is not None:
        migrate(args.data_root, fields["DATA_DIR"], version)
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
