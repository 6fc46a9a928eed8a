"""Reading a desired-state file: YAML with line-numbered errors, and the last good spec.

An invalid spec never replaces a valid one: the daemon keeps the last good
spec (a copy on the data dir, so it survives a restart) and the rejection
names the file, the field path and the line, in one message:

    spec.yaml:7: spec.health.interval: '5 seconds' is not a duration (use forms like 5s, 2m, 1h30m)

A spec file is input from outside the device's trust, so it is refused at the
door before it can cost anything: more than :data:`MAX_SPEC_BYTES` is refused
before the YAML parser sees a byte; collections nested deeper than
:data:`MAX_DEPTH` are refused while the document is composed (before the
composer's recursion can exhaust the stack); a document whose nodes, with
every alias expanded, number more than :data:`MAX_NODES` is refused the same
way (legal anchors and aliases keep working, a "billion laughs" does not);
and every message quotes at most ~80 characters of a value. The daemon reads
the file again only when its ``stat`` changed, and validates it again only
when its content hash changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.scanner import RoundTripScanner, ScannerError

from reconciler.durable import SECRET_MODE, atomic_write
from reconciler.errors import SpecError
from reconciler.quoting import printable
from reconciler.spec import UpdatePolicy, revision_of

LAST_GOOD = "spec.last-good.yaml"
#: The revision of the last spec file rejected (so each bad revision is recorded once).
REJECTED = "spec.rejected"
#: The largest spec file read (a real spec is a few hundred bytes).
MAX_SPEC_BYTES = 256 * 1024
#: The deepest nesting of collections (a real spec nests four deep).
MAX_DEPTH = 32
#: The most nodes a document may hold with every alias expanded (a real spec: ~60).
MAX_NODES = 2_000
#: The most characters of scalar text a document may hold with every alias expanded.
MAX_EXPANDED_CHARS = 1 << 20
#: The most problems one message lists (then "... and N more").
MAX_PROBLEMS = 10
#: The longest text of a YAML parser's message shown (it may quote a key or value).
_YAML_MESSAGE_LIMIT = 160
#: A file changed less than this long ago may change again within the same
#: timestamp tick, so its ``stat`` alone is not trusted to say it is unchanged.
_RACY_SECONDS = 2.0


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with where it came from and its revision (content hash)."""

    policy: UpdatePolicy
    path: Path
    revision: str
    content: bytes


def parse_spec(content: bytes, path: Path = Path("spec.yaml")) -> LoadedSpec:
    """Validate ``content``; raise :class:`SpecError` naming file, field and line.

    This is the one entry point for untrusted spec bytes: it raises nothing
    but :class:`SpecError`, whatever the bytes are (the fuzz tests feed it
    bytes alone, so ``path``, used only in messages, has a default).
    """
    if len(content) > MAX_SPEC_BYTES:
        raise SpecError(_too_large(path, len(content)))
    document = _load_yaml(content, path)
    try:
        policy = UpdatePolicy.model_validate(document)
    except ValidationError as exc:
        raise SpecError(_describe(exc, document, path)) from None
    return LoadedSpec(policy, path, revision_of(content), content)


def load_spec(path: Path) -> LoadedSpec:
    """Read and validate the spec file at ``path``."""
    return parse_spec(read_spec_bytes(path), path)


def read_spec_bytes(path: Path) -> bytes:
    """The file's bytes; a file larger than a spec may be is refused without reading it all."""
    content, size = _read_head(path)
    if size > MAX_SPEC_BYTES:
        raise SpecError(_too_large(path, size))
    return content


def _read_head(path: Path) -> tuple[bytes, int]:
    """At most one byte more than a spec may hold, and the file's size (at least that read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the daemon
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError(f"{path}: cannot read the spec (not a regular file)")
        content = _read_at_most(fd, MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    return content, max(info.st_size, len(content))


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 16))):
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _too_large(path: Path, size: int) -> str:
    return (f"{path}: the spec is larger than {MAX_SPEC_BYTES // 1024} KiB ({size} bytes); "
            "a spec names a version, a channel and a policy in a few hundred bytes")


class _Refused(MarkedYAMLError):
    """A document the spec reader refuses to compose (too deep, too many nodes)."""


class _BoundedScanner(RoundTripScanner):
    """ruamel's scanner, refusing flow collections (``[``, ``{``) nested too deep and
    explicit keys.

    Counted as each bracket is read: the scanner otherwise reads ahead up to
    1024 characters of ``[[[[...`` before the composer sees the first one,
    which costs time quadratic in that stretch.
    """

    def fetch_directive(self) -> None:
        """Refuse ``%YAML`` and ``%TAG`` wherever they stand: a spec is plain YAML 1.2
        (YAML 1.1 reads yes/no/on/off as booleans; ruamel fails on a ``%YAML 1.3``
        line inside a document with an internal error)."""
        raise ScannerError(None, None, "a spec is YAML 1.2; remove the %YAML directive "
                           "(YAML 1.1 reads yes/no/on/off as booleans)"
                           if self.reader.prefix(5) == "%YAML" else
                           "a spec is plain YAML 1.2; remove the % directive",
                           self.reader.get_mark())

    def fetch_key(self) -> None:
        """Refuse explicit keys (``? key``): a spec never needs them, and ruamel takes
        time exponential in how deeply they nest (16 of them on one line: 44 s)."""
        raise ScannerError(None, None, "explicit mapping keys ('? ...') are not allowed in "
                           "a spec; write 'key: value'", self.reader.get_mark())

    def fetch_flow_collection_start(self, token_class: Any, to_push: str) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(None, None, f"collections are nested more than {MAX_DEPTH} deep",
                               self.reader.get_mark())
        super().fetch_flow_collection_start(token_class, to_push)


class _BoundedComposer(Composer):
    """ruamel's composer with a depth limit and a count of values and text, aliases expanded.

    The composer recurses once per level of nesting, so the depth is checked
    before each level is entered, far below Python's recursion limit. Each
    node's size (values and scalar characters, itself and everything under
    it, aliases expanded) is kept so that an alias adds the size of what it
    stands for: nine aliases of nine aliases of ... are counted as the
    structure they expand to, without building it, and so is a 200 KB string
    aliased a thousand times (which anything printing it would expand).
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.warn_double_anchors = False  # legal YAML; a warning would print the document
        self.nodes = 0
        self.chars = 0
        self.sizes: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self.sizes:
                raise _Refused(None, None, f"the alias *{printable(str(event.anchor), 40)} "
                               "refers to a collection it is inside", event.start_mark)
            self._count(*self.sizes[id(node)], event)
            return node
        if self.depth >= MAX_DEPTH:
            raise _Refused(None, None, f"collections are nested more than {MAX_DEPTH} deep",
                           event.start_mark)
        nodes, chars = self.nodes, self.chars
        self._count(1, 0, event)
        node = super().compose_node(parent, index)
        if isinstance(node, ScalarNode):
            self._count(0, len(node.value), event)
        self.sizes[id(node)] = (self.nodes - nodes, self.chars - chars)
        return node

    def _count(self, nodes: int, chars: int, event: Any) -> None:
        self.nodes += nodes
        self.chars += chars
        if self.nodes > MAX_NODES:
            raise _Refused(None, None, f"the document holds more than {MAX_NODES} values "
                           "with its aliases expanded", event.start_mark)
        if self.chars > MAX_EXPANDED_CHARS:
            raise _Refused(None, None, f"the document holds more than {MAX_EXPANDED_CHARS} "
                           "characters of text with its aliases expanded", event.start_mark)


def _load_yaml(content: bytes, path: Path) -> Any:
    yaml = YAML(typ="rt")
    yaml.Scanner = _BoundedScanner
    yaml.Composer = _BoundedComposer
    try:
        document = yaml.load(content)
        version = yaml.version
    except MarkedYAMLError as exc:
        raise SpecError(_yaml_message(exc, path)) from None
    except (YAMLError, ValueError, AssertionError, RecursionError) as exc:
        # ruamel raises ValueError for an integer of more than 4300 digits or
        # an impossible date, and AssertionError for a %YAML 1.3 directive.
        raise SpecError(f"{path}: YAML error: {_yaml_text(exc)}") from None
    if version not in (None, (1, 2)):
        raise SpecError(f"{path}:1: YAML error: a spec is YAML 1.2; remove the %YAML "
                        "directive (YAML 1.1 reads yes/no/on/off as booleans)")
    if not isinstance(document, dict):
        raise SpecError(f"{path}:1: the spec must be a mapping with apiVersion, kind, "
                        "metadata and spec")
    return document


def _yaml_message(exc: MarkedYAMLError, path: Path) -> str:
    mark = exc.problem_mark or exc.context_mark
    line = f"{mark.line + 1}" if mark is not None else "?"
    text = printable(str(exc.problem or exc.context), _YAML_MESSAGE_LIMIT)
    return f"{path}:{line}: YAML error: {text}"


def _yaml_text(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return f"collections are nested more than {MAX_DEPTH} deep"
    text = str(exc) or type(exc).__name__
    if "integer string conversion" in text:
        return "a number has more than 4300 digits"
    return printable(text.splitlines()[0] if text.strip() else text, _YAML_MESSAGE_LIMIT)


def _describe(exc: ValidationError, document: Any, path: Path) -> str:
    """One message per problem, each naming the field path and its line."""
    lines = []
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    for error in errors[:MAX_PROBLEMS]:
        loc = tuple(error["loc"])
        field = _field_path(loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{path}:{_line_of(document, loc)}: {field}: {message}")
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"{path}: ... and {len(errors) - MAX_PROBLEMS} more problems")
    return "\n".join(lines)


def _field_path(loc: tuple[Any, ...]) -> str:
    """``spec.rollout.windows[1].start``: how operators name a field."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            name = printable(str(part), 40)
            path += f".{name}" if path else name
    return path or "(document)"


def _line_of(document: Any, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest node of ``loc`` that exists in the YAML."""
    node, line = document, 1
    for key in loc:
        if isinstance(node, CommentedMap) and key in node:
            line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            break
    return line


Result = tuple[LoadedSpec | None, SpecError | None]


@dataclass(frozen=True)
class _Reading:
    """What the keeper last read: the file's stat, its content hash, and the answer."""

    stamp: tuple[int, ...] | None
    digest: str
    result: Result


class SpecKeeper:
    """The spec in force: the file's when valid, else the last good one kept on disk.

    The daemon asks on every pass (and twice a second during a download), so
    an unchanged file costs one ``stat``: it is read again only when its
    ``stat`` changed (or changed too recently to trust, see ``_RACY_SECONDS``)
    and validated again only when its content hash changed.
    """

    def __init__(self, path: Path, data_dir: Path) -> None:
        self.path = path
        self.copy = data_dir / LAST_GOOD
        self.rejected_path = data_dir / REJECTED
        #: The revision of the file's bytes as last read (valid or not); None: unreadable.
        self.file_revision: str | None = None
        self._reading: _Reading | None = None
        self._copy_revision: str | None = None

    def refresh(self) -> Result:
        """Read the file; on success keep it as last good; return (spec in force, error)."""
        stamp = self._stamp()
        if self._reading is not None and stamp is not None and stamp == self._reading.stamp:
            return self._reading.result
        try:
            content, size = _read_head(self.path)
        except SpecError as error:
            self.file_revision = None
            self._reading = None
            return self.last_good(), error
        digest = hashlib.sha256(content + b"\0%d" % size).hexdigest()
        if self._reading is not None and digest == self._reading.digest:
            result = self._reading.result
        else:
            result = self._validate(content, size)
        self._reading = _Reading(stamp, digest, result)
        return result

    def _validate(self, content: bytes, size: int) -> Result:
        try:
            if size > MAX_SPEC_BYTES or len(content) > MAX_SPEC_BYTES:
                self.file_revision = revision_of(content + b"\0%d" % size)
                raise SpecError(_too_large(self.path, size))
            self.file_revision = revision_of(content)
            loaded = parse_spec(content, self.path)
        except SpecError as error:
            return self.last_good(), error
        if self.copy_revision() != loaded.revision:
            # 0600: a copy kept before credentials in a spec URL were refused may hold one.
            atomic_write(self.copy, loaded.content, SECRET_MODE)
            self._copy_revision = loaded.revision
        return loaded, None

    def _stamp(self) -> tuple[int, ...] | None:
        """The file's identity and times; None when it cannot be trusted to mean "unchanged"."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if time.time() - st.st_mtime < _RACY_SECONDS:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def last_good(self) -> LoadedSpec | None:
        """The last valid spec seen, still naming the file it came from.

        A kept copy that no longer validates (damaged, or written before a rule
        was tightened) is no spec in force, never an exception.
        """
        try:
            content = read_spec_bytes(self.copy)
            loaded = parse_spec(content, self.copy)
        except SpecError:
            return None
        return LoadedSpec(loaded.policy, self.path, loaded.revision, content)

    def copy_revision(self) -> str | None:
        """Revision of the kept copy, without validating it again."""
        if self._copy_revision is None:
            try:
                self._copy_revision = revision_of(self.copy.read_bytes())
            except FileNotFoundError:
                return None
        return self._copy_revision

    def rejected(self) -> str | None:
        """The revision of the last file rejected (and recorded), if any."""
        try:
            with open(self.rejected_path, "rb") as f:
                return f.read(128).decode("ascii", "replace").strip() or None
        except OSError:
            return None

    def note_rejected(self, revision: str) -> None:
        """Remember that ``revision`` was rejected and recorded (after its record)."""
        atomic_write(self.rejected_path, f"{revision}\n".encode("ascii", "replace"))
