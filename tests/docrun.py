"""Run a document's console blocks on a simulated device and compare what they print.

The user documentation is a transcript of real commands; this module makes it one.
``docs/testing.md`` ("Executed docs") describes the conventions for writers:

- A fenced block with the info string ``console`` runs; any other block (``yaml``,
  ``json``, ``mermaid``, ``text``, none) is left alone. In a console block a line
  starting ``$ `` is a command, and the lines after it, up to the next ``$ `` line
  or the end of the block, are what it prints (stdout and stderr together, in the
  order written, as one terminal shows them).
- An HTML comment ``<!-- docs-test: ... -->`` right before a block (blank lines
  between are fine) gives directives for that block, separated by ``;``:
  ``wait 60s`` (re-run the block's first command until its output matches, for up
  to 60 s: the device gets there on its own; only commands that change nothing may
  be re-run), ``exit N`` (each command of the block exits N; the default is 0; a
  command followed by ``$ echo $?`` is checked by that line instead), ``answer y``
  (stdin is a terminal on which ``y`` and Enter are typed ahead; ``answer ^D``: Ctrl-D,
  the end of input; otherwise stdin is not a terminal), ``any-seq`` (the audit record
  numbers that start ``kruxos audit list`` lines may differ: how many records the
  daemon's passes wrote before depends on when they ran; only for a block that shows
  no sequence on purpose).
- One comment at the top of a document, ``<!-- docs-test: device /tmp/dev -->``,
  names the directory its commands call the device's; it is a fresh directory of the
  test. ``device /tmp/dev started`` makes and boots the device first (``kruxos sim
  init``, ``kruxos sim run``), as the document says a reader has done.

Each command runs in ``bash -c`` in the device's directory with ``KRUXOS_CONFIG``
set to its config, after ``(exit N)`` with the previous command's status (so ``$
echo $?`` works as in one shell). ``export NAME=VALUE`` sets the variable for the
commands after it. A command ending in ``&`` runs in the background, its output to
the device's console log (``<dir>-console.log``), and is stopped at the end.
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import os
import pty
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.cli_contract import check as contract_check
from tests.device import REPO, SimDevice
from tests.waiting import wait_for

#: The fence that opens a block that runs.
_OPEN = re.compile(r"^(\s*)```console\s*$")
_CLOSE = re.compile(r"^\s*```\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")

#: Commands a ``wait`` may re-run: they read the device and change nothing.
READ_ONLY = ("kruxos update status", "kruxos update check", "kruxos audit list",
             "kruxos audit show", "kruxos audit verify", "kruxos spec plan",
             "kruxos spec validate", "kruxos slot verify", "cat ", "ls ")


class DocError(Exception):
    """The document itself is malformed: a directive or block the runner cannot read."""


@dataclass
class Command:
    """One ``$ `` line and what the document says it prints."""

    line: int  # 1-based line of the ``$ `` line in the document
    text: str
    expected: list[tuple[int, str]] = field(default_factory=list)  # (line, text)
    exit: int = 0
    checked_by_echo: bool = False
    any_seq: bool = False


@dataclass
class Block:
    """A console block and its directives."""

    line: int
    commands: list[Command]
    wait: float | None = None
    answer: str | None = None


@dataclass
class Doc:
    """A parsed document: its device directory as written and its runnable blocks."""

    name: str
    device: str | None
    started: bool
    blocks: list[Block]


# ---- reading a document ---------------------------------------------------------------------

def parse(name: str, text: str) -> Doc:
    """Every console block of ``text`` with its directives; ``DocError`` names a bad line."""
    lines = text.splitlines()
    blocks: list[Block] = []
    device: str | None = None
    started = False
    pending: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        opened = _OPEN.match(lines[i])
        if directive and directive.group(1).startswith("device "):
            words = directive.group(1).split()
            device, started = words[1], words[2:] == ["started"]
            if len(words) > 3 or words[2:] not in ([], ["started"]):
                raise DocError(f"{name}:{i + 1}: cannot read {lines[i].strip()!r}")
        elif directive:
            if pending is not None:
                raise DocError(f"{name}:{pending[0]}: a docs-test directive with no console "
                               "block after it")
            pending = (i + 1, directive.group(1))
        elif opened:
            end = next((j for j in range(i + 1, len(lines)) if _CLOSE.match(lines[j])), None)
            if end is None:
                raise DocError(f"{name}:{i + 1}: console block never closed")
            block = _block(name, i + 1, lines[i + 1:end], len(opened.group(1)))
            if pending is not None:
                _apply(name, pending, block)
                pending = None
            blocks.append(block)
            i = end
        elif pending is not None and lines[i].strip():
            raise DocError(f"{name}:{pending[0]}: a docs-test directive with no console "
                           f"block after it (line {i + 1} comes first)")
        i += 1
    if pending is not None:
        raise DocError(f"{name}:{pending[0]}: a docs-test directive with no console block "
                       "after it")
    if blocks and device is None:
        raise DocError(f"{name}: console blocks but no <!-- docs-test: device DIR --> line")
    return Doc(name, device, started, blocks)


def _block(name: str, first: int, body: list[str], indent: int) -> Block:
    """The commands of a block whose first body line is line ``first + 1``."""
    commands: list[Command] = []
    for offset, raw in enumerate(body):
        number = first + 1 + offset
        text = raw[indent:] if raw[:indent].strip() == "" else raw
        if text.startswith("$ "):
            if text == "$ echo $?" and commands:
                commands[-1].checked_by_echo = True
            commands.append(Command(number, text[2:]))
        elif not commands:
            raise DocError(f"{name}:{number}: a console block starts with a command "
                           "('$ ...'), not output")
        else:
            commands[-1].expected.append((number, text))
    if not commands:
        raise DocError(f"{name}:{first}: an empty console block")
    return Block(first, commands)


def _apply(name: str, pending: tuple[int, str], block: Block) -> None:
    """Give ``block`` the directives of one comment."""
    line, text = pending
    for item in filter(None, (part.strip() for part in text.split(";"))):
        word, _, value = item.partition(" ")
        if word == "wait" and re.fullmatch(r"\d+s", value):
            block.wait = float(value[:-1])
            if not block.commands[0].text.startswith(READ_ONLY):
                raise DocError(f"{name}:{line}: 'wait' would re-run "
                               f"{block.commands[0].text!r}, which may change something; "
                               f"only these are re-run: {', '.join(READ_ONLY)}")
        elif word == "exit" and value.isdigit():
            for command in block.commands:
                command.exit = int(value)
        elif word == "answer" and value:
            block.answer = value
        elif word == "any-seq" and not value:
            for command in block.commands:
                command.any_seq = True
        else:
            raise DocError(f"{name}:{line}: unknown docs-test directive {item!r} "
                           "(wait Ns, exit N, answer TEXT, any-seq)")
    for command in block.commands:
        if command.text == "echo $?":
            command.exit = 0


# ---- normalising ----------------------------------------------------------------------------

#: What differs between two correct runs, and what it becomes on both sides.
#: Keep each as narrow as it can be: a rule that hides a real difference is a bug.
NORMALISE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"), "<time>"),
    (re.compile(r"\b(\d+[dhms])+ ago\b"), "<age> ago"),
    (re.compile(r"\(\d+\.\ds\)"), "(<seconds>)"),  # an action's duration in an audit line
    (re.compile(r'"duration_s": \d+(\.\d+)?(e-\d+)?'), '"duration_s": <seconds>'),
    (re.compile(r"\b(127\.0\.0\.1|localhost|\[::1\]):\d{5}\b"), r"\1:<port>"),
    (re.compile(r"\bpid \d+\b"), "pid <pid>"),
    (re.compile(r"/dev/pts/\d+\b"), "/dev/pts/<n>"),
    (re.compile(r"\bkey [0-9a-f]{16}\b"), "key <key-id>"),  # sim init makes a new key
    (re.compile(r"\b[0-9a-f]{64}\b"), "<sha256>"),
    (re.compile(r"\b[0-9a-f]{16}…"), "<hash>…"),
)


#: The record number that starts an ``audit list`` line (``any-seq`` blocks only).
_AUDIT_SEQ = re.compile(r"^#\d+\s+(?=<time>)")


def normalise(line: str, user: str = getpass.getuser()) -> str:
    """``line`` with the parts that differ between correct runs replaced, trailing blanks
    cut. The user running the commands reads as ``root``, as in the docs."""
    if user != "root":
        line = re.sub(rf"\bby {re.escape(user)} on\b", "by root on", line)
    for pattern, replacement in NORMALISE:
        line = pattern.sub(replacement, line)
    return line.rstrip()


# ---- running --------------------------------------------------------------------------------

@dataclass
class Result:
    status: int
    output: str


class Session:
    """One document's commands, as one person at one shell: directory, variables, last status."""

    def __init__(self, doc: Doc, device: SimDevice) -> None:
        self.doc = doc
        self.device = device
        self.written = doc.device or str(device.dir)
        self.env = dict(device.env, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.env["PATH"] = f"{self._shim()}{os.pathsep}{self.env.get('PATH', '')}"
        self.env.pop("SSH_TTY", None)  # who asked is "on no terminal" unless a block types
        self.status = 0
        self.background: list[subprocess.Popen[bytes]] = []

    def _shim(self) -> Path:
        """A ``kruxos`` on ``PATH`` that runs this checkout with this interpreter."""
        shim = self.device.dir.parent / f"{self.device.dir.name}-bin"
        shim.mkdir(exist_ok=True)
        (shim / "kruxos").write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m reconciler.cli.main \"$@\"\n")
        (shim / "kruxos").chmod(0o755)
        return shim

    def to_real(self, text: str) -> str:
        return text.replace(self.written, str(self.device.dir))

    def to_written(self, text: str) -> str:
        return text.replace(str(self.device.dir), self.written)

    def cwd(self) -> Path:
        return self.device.dir if self.device.dir.is_dir() else self.device.dir.parent

    def run(self, command: str, answer: str | None = None) -> Result:
        """Run one command line as the document writes it."""
        real = self.to_real(command)
        exported = re.fullmatch(r"export (\w+)=(\S+)", real)
        if exported:
            self.env[exported.group(1)] = exported.group(2)
            self.status = 0
            return Result(0, "")
        if real.endswith("&"):
            self._background(real[:-1].strip())
            self.status = 0
            return Result(0, "")
        result = self._foreground(real, answer)
        self.status = result.status
        self._contract(real, result)
        return Result(result.status, self.to_written(result.output))

    def _foreground(self, real: str, answer: str | None) -> Result:
        script = f"(exit {self.status}); {real}"
        with _stdin(answer) as stdin:
            done = subprocess.run(["bash", "-c", script], cwd=self.cwd(), env=self.env,
                                  stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=120)
        return Result(done.returncode, done.stdout)

    def _background(self, real: str) -> None:
        with open(self.device.console, "ab") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {real}"], cwd=self.cwd(),
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append(proc)
        if self.device.proc is None and " sim run " in f" {real} ":
            self.device.proc = proc  # stopped (SIGTERM, then SIGKILL) by the device's teardown

    def _contract(self, real: str, result: Result) -> None:
        """A ``kruxos`` command is held to its exit-status and JSON contract too."""
        words = shlex.split(real, comments=True) if "|" not in real else []
        if words[:1] == ["kruxos"]:
            contract_check(words[1:], subprocess.CompletedProcess(
                words, result.status, result.output, ""))

    def stop(self) -> None:
        """End what the document started in the background (by pid)."""
        for proc in self.background:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, 15)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, 9)
                    proc.wait()


@contextlib.contextmanager
def _stdin(answer: str | None) -> Iterator[int]:
    """No terminal, or a pseudo-terminal with ``answer`` and Enter typed ahead (``^D``:
    Ctrl-D alone, the end of input)."""
    if answer is None:
        with open(os.devnull, "rb") as null:
            yield null.fileno()
        return
    main, child = pty.openpty()
    try:
        os.write(main, b"\x04" if answer == "^D" else f"{answer}\n".encode())
        yield child
    finally:
        os.close(child)
        os.close(main)


# ---- comparing ------------------------------------------------------------------------------

def mismatch(doc: Doc, command: Command, result: Result) -> str | None:
    """Why ``result`` is not what the document shows for ``command`` (``None``: it is)."""
    want = [normalise(text) for _, text in command.expected]
    got = [normalise(text) for text in result.output.splitlines()]
    if command.any_seq:  # an audit list line's record number, as in ``#9  <time>``
        want, got = ([_AUDIT_SEQ.sub("#<seq> ", line) for line in lines] for lines in (want, got))
    while want and not want[-1]:
        want.pop()
    while got and not got[-1]:
        got.pop()
    problems = []
    if not command.checked_by_echo and result.status != command.exit:
        problems.append(f"exit status {result.status}, the doc says {command.exit}")
    if want != got:
        problems.append(_difference(doc, command, want, got))
    if not problems:
        return None
    return (f"{doc.name}:{command.line}: `$ {command.text}` does not do what the doc "
            f"shows: " + "; ".join(problems) + "\n--- what it printed ---\n" + result.output)


def _difference(doc: Doc, command: Command, want: list[str], got: list[str]) -> str:
    """The first differing line, with its line number in the document, then a diff."""
    first = next((k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
                 min(len(want), len(got)))
    where = (command.expected[first][0] if first < len(command.expected)
             else (command.expected[-1][0] + 1 if command.expected else command.line + 1))
    shown = want[first] if first < len(want) else "(nothing more)"
    printed = got[first] if first < len(got) else "(nothing more)"
    diff = "\n".join(difflib.unified_diff(want, got, "the doc", "the command", lineterm="",
                                          n=1))
    return (f"line {where} differs:\n  {doc.name}:{where}: doc:     {shown}\n"
            f"  {' ' * len(f'{doc.name}:{where}:')} printed: {printed}\n"
            f"(after normalisation)\n{diff}")


def run_doc(doc: Doc, device: SimDevice, record: dict[int, Result] | None = None) -> None:
    """Run every block of ``doc`` in order; the first command that differs fails it.

    With ``record`` (a writer's tool, ``python -m tests.docrun rewrite FILE``) nothing
    fails: what each command printed is kept by the line of its ``$ `` line."""
    session = Session(doc, device)
    try:
        for block in doc.blocks:
            _run_block(session, block, record)
    finally:
        session.stop()


def _run_block(session: Session, block: Block, record: dict[int, Result] | None) -> None:
    for index, command in enumerate(block.commands):
        if index == 0 and block.wait is not None:
            result = _wait(session, block, command, record is not None)
        else:
            result = session.run(command.text, block.answer)
        problem = mismatch(session.doc, command, result)
        if record is not None:
            record[command.line] = result
        elif problem is not None:
            raise AssertionError(problem + session.device.diagnostics())


def _wait(session: Session, block: Block, command: Command, lenient: bool) -> Result:
    """Re-run ``command`` until it prints what the doc shows, or the block's deadline."""
    assert block.wait is not None
    last: list[Result] = []

    def matches() -> bool:
        last[:] = [session.run(command.text, block.answer)]
        return mismatch(session.doc, command, last[0]) is None

    started = time.monotonic()
    try:
        wait_for(matches, block.wait, f"{session.doc.name}:{command.line}: `$ {command.text}`"
                 " to print what the doc shows", every=0.3)
    except AssertionError:
        if lenient:
            return last[0]
        raise AssertionError(f"after {time.monotonic() - started:.0f}s (wait {block.wait:.0f}s)"
                             f", still: {mismatch(session.doc, command, last[0])}"
                             f"{session.device.diagnostics()}") from None
    return last[0]


def rewrite(path: Path, workdir: Path) -> None:
    """Run the document at ``path`` and write what each command printed as its output
    (a writer's tool: read the diff before committing it, as it may show a bug)."""
    text = path.read_text()
    doc = parse(str(path), text)
    device = SimDevice(workdir / "dev")
    record: dict[int, Result] = {}
    try:
        if doc.started:
            device.cli("sim", "init", str(device.dir))
            device.start()
        run_doc(doc, device, record)
    finally:
        try:
            device.stop()
        finally:
            device.kill_leftovers()
    lines = text.splitlines()
    for block in reversed(doc.blocks):
        for command in reversed(block.commands):
            if command.line not in record or mismatch(doc, command,
                                                      record[command.line]) is None:
                continue  # what the doc shows still holds: its example values stay
            indent = lines[command.line - 1][:len(lines[command.line - 1])
                                             - len(lines[command.line - 1].lstrip())]
            first = command.line
            last = command.expected[-1][0] if command.expected else command.line
            printed = record[command.line].output.splitlines()
            lines[first:last] = [f"{indent}{line}".rstrip() if line else "" for line in printed]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import tempfile

    if len(sys.argv) != 3 or sys.argv[1] != "rewrite":
        sys.exit("usage: python -m tests.docrun rewrite FILE")
    with tempfile.TemporaryDirectory() as scratch:
        rewrite(Path(sys.argv[2]), Path(scratch))
