"""Reading a desired-state file: YAML with line-numbered errors, and the last good spec.

An invalid spec never replaces a valid one: the daemon keeps the last good
spec (a copy on the data dir, so it survives a restart) and the rejection
names the file, the field path and the line, in one message:

    spec.yaml:7: spec.health.interval: '5 seconds' is not a duration (use forms like 5s, 2m, 1h30m)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from reconciler.errors import SpecError
from reconciler.spec import UpdatePolicy, revision_of
from reconciler.store import SECRET_MODE, atomic_write

LAST_GOOD = "spec.last-good.yaml"


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with where it came from and its revision (content hash)."""

    policy: UpdatePolicy
    path: Path
    revision: str
    content: bytes


def parse_spec(content: bytes, path: Path) -> LoadedSpec:
    """Validate ``content``; raise :class:`SpecError` naming file, field and line."""
    document = _load_yaml(content, path)
    try:
        policy = UpdatePolicy.model_validate(document)
    except ValidationError as exc:
        raise SpecError(_describe(exc, document, path)) from None
    return LoadedSpec(policy, path, revision_of(content), content)


def load_spec(path: Path) -> LoadedSpec:
    """Read and validate the spec file at ``path``."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc.strerror or exc})") from exc
    return parse_spec(content, path)


def _load_yaml(content: bytes, path: Path) -> Any:
    yaml = YAML(typ="rt")
    try:
        document = yaml.load(content)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{mark.line + 1}" if mark is not None else "?"
        raise SpecError(f"{path}:{line}: YAML error: {exc.problem or exc.context}") from None
    except YAMLError as exc:
        raise SpecError(f"{path}: YAML error: {exc}") from None
    if not isinstance(document, dict):
        raise SpecError(f"{path}:1: the spec must be a mapping with apiVersion, kind, "
                        "metadata and spec")
    return document


def _describe(exc: ValidationError, document: Any, path: Path) -> str:
    """One message per problem, each naming the field path and its line."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        field = _field_path(loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{path}:{_line_of(document, loc)}: {field}: {message}")
    return "\n".join(lines)


def _field_path(loc: tuple[Any, ...]) -> str:
    """``spec.rollout.windows[1].start``: how operators name a field."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
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


class SpecKeeper:
    """The spec in force: the file's when valid, else the last good one kept on disk."""

    def __init__(self, path: Path, data_dir: Path) -> None:
        self.path = path
        self.copy = data_dir / LAST_GOOD

    def refresh(self) -> tuple[LoadedSpec | None, SpecError | None]:
        """Read the file; on success keep it as last good; return (spec in force, error)."""
        try:
            loaded = load_spec(self.path)
        except SpecError as error:
            return self.last_good(), error
        if self.copy_revision() != loaded.revision:
            # 0600: a spec may still carry a channel password in its URL.
            atomic_write(self.copy, loaded.content, SECRET_MODE)
        return loaded, None

    def last_good(self) -> LoadedSpec | None:
        """The last valid spec seen, still naming the file it came from."""
        try:
            content = self.copy.read_bytes()
        except FileNotFoundError:
            return None
        loaded = parse_spec(content, self.copy)
        return LoadedSpec(loaded.policy, self.path, loaded.revision, content)

    def copy_revision(self) -> str | None:
        """Revision of the kept copy, without validating it again."""
        try:
            return revision_of(self.copy.read_bytes())
        except FileNotFoundError:
            return None

