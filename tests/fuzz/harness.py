"""Feeding a parser hostile documents in a separate process under hard limits.

Every parser of the product (spec, channel metadata, boot envs, BLS names,
health answers, inbox requests) must answer any input with a value or one of
its own errors, in bounded time and memory. A fuzz test generates documents
(hypothesis) in the test process and sends each to a :class:`ParserWorker`, a
child process with an address-space limit (512 MiB) that must answer each
document within a deadline (10 s). A crash, a hang or a death is a finding,
reported with the document that caused it.

``KRUXOS_FUZZ_SAVE=DIR`` keeps each finding's whole document in DIR (the
report shows only its first 400 bytes). How many documents a test runs is
:func:`examples`: 1,000 by default (``make test``), more when
``KRUXOS_FUZZ_EXAMPLES`` says so (``make torture`` sets 50,000).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import select
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 512 << 20
DEADLINE = 10.0
#: The longest error message a parser may give (it quotes ~80 characters of a value).
MESSAGE_LIMIT = 2000


def examples(default: int = 1000) -> int:
    """Documents per parser for this run (``KRUXOS_FUZZ_EXAMPLES`` overrides)."""
    return int(os.environ.get("KRUXOS_FUZZ_EXAMPLES", default))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@dataclass
class Findings:
    """What went wrong, with the documents; and the slowest answer seen."""

    problems: list[str] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    slowest: float = 0.0

    def assert_clean(self) -> None:
        assert not self.problems, "\n\n".join(self.problems[:5])


class ParserWorker:
    """A child process that runs ``target`` (``module:function``) on each document."""

    def __init__(self, target: str, accepted: tuple[str, ...],
                 deadline: float = DEADLINE, message_limit: int = MESSAGE_LIMIT) -> None:
        self.argv = [sys.executable, "-m", "tests.fuzz.worker", target, *accepted]
        self.deadline = deadline
        self.message_limit = message_limit
        self.findings = Findings()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ParserWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, preexec_fn=_limit_memory)
        return self.proc

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    def feed(self, document: bytes) -> dict[str, object]:
        """Parse one document; record a finding unless the answer is ok or refused."""
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(len(document).to_bytes(4, "big") + document)
            proc.stdin.flush()
        except BrokenPipeError:
            return self._lost(document, "the worker died before reading it")
        ready, _, _ = select.select([proc.stdout], [], [], self.deadline)
        line = proc.stdout.readline() if ready else b""
        if not ready:
            return self._lost(document, f"no answer within {self.deadline}s")
        if not line:
            return self._lost(document, f"the worker died (exit {proc.wait()})")
        answer: dict[str, object] = json.loads(line)
        self._judge(document, answer)
        return answer

    def _judge(self, document: bytes, answer: dict[str, object]) -> None:
        kind = str(answer["result"])
        self.findings.answers[kind] = self.findings.answers.get(kind, 0) + 1
        self.findings.slowest = max(self.findings.slowest, float(str(answer["seconds"])))
        if kind == "crash":
            self._problem(document, f"{answer['type']}:\n{answer['traceback']}")
        elif kind == "refused" and len(str(answer["message"])) > self.message_limit:
            self._problem(document, f"message of {len(str(answer['message']))} characters: "
                                    f"{str(answer['message'])[:300]}...")

    def _lost(self, document: bytes, why: str) -> dict[str, object]:
        self.close()
        self._problem(document, why)
        return {"result": "lost", "why": why}

    def _problem(self, document: bytes, what: str) -> None:
        saved = _save(document)
        self.findings.problems.append(f"document {document[:400]!r} ({len(document)} bytes"
                                      f"{f', saved as {saved}' if saved else ''}): {what}")


def _save(document: bytes) -> Path | None:
    """Keep a finding's whole document where ``KRUXOS_FUZZ_SAVE`` says, to replay it."""
    folder = os.environ.get("KRUXOS_FUZZ_SAVE")
    if not folder:
        return None
    path = Path(folder) / f"{hashlib.sha256(document).hexdigest()[:16]}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(document)
    return path
