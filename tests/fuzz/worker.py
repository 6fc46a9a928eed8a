"""The process a fuzz test feeds: one parser, many documents, under hard limits.

Run as ``python -m tests.fuzz.worker MODULE:FUNCTION ACCEPTED...``. It reads
documents framed as a 4-byte big-endian length and the bytes, calls
``FUNCTION(document)`` on each and answers one JSON line per document:
``{"result": "ok"}``, ``{"result": "refused", "message": ...}`` when the parser
raised one of the ``ACCEPTED`` exception classes (dotted names), or
``{"result": "crash", "traceback": ...}`` for anything else. The parent sets
the address-space limit and the per-document deadline; a worker that dies or
hangs is replaced.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module), name)


def _read_exact(stream: Any, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(target: Callable[[bytes], object], accepted: tuple[type[BaseException], ...]) -> None:
    """Answer documents from stdin until it closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout
    while (header := _read_exact(stdin, 4)) is not None:
        document = _read_exact(stdin, int.from_bytes(header, "big")) or b""
        started = time.perf_counter()
        answer: dict[str, Any]
        try:
            target(document)
            answer = {"result": "ok"}
        except accepted as exc:
            answer = {"result": "refused", "message": str(exc)}
        except BaseException as exc:  # noqa: BLE001 - everything else is the finding
            answer = {"result": "crash", "type": type(exc).__name__,
                      "traceback": "".join(traceback.format_exception(exc))[-4000:]}
        answer["seconds"] = time.perf_counter() - started
        stdout.write(json.dumps(answer) + "\n")
        stdout.flush()


def main(argv: list[str]) -> int:
    target = _resolve(argv[0])
    accepted = tuple(_resolve(name) for name in argv[1:])
    serve(target, accepted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
