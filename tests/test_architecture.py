"""The core's purity and the adapters' boundaries, checked on the source (AST).

The decision core (``decide``, ``windows``, ``spec``, ``observed``, ``actions``,
``components``, ``service_rules``, ``semver``, the ``urls`` and ``quoting`` helpers
``spec`` validates with, and ``errors``)
imports only the standard library modules below, pydantic (``spec`` only),
``urllib.parse`` and ``ipaddress`` (``urls`` only), ``unicodedata``
(``quoting`` only) and other core modules, and never reads the clock, a file or the
environment. Adapters never import the daemon or the CLI; bootloader backends
do not import each other (``grub``, ``uboot`` and ``bls`` may use their format helpers).
The checker proves itself on synthetic bad modules first.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reconciler"

CORE = ("decide", "windows", "spec", "observed", "actions", "semver", "urls", "quoting",
        "errors", "components", "service_rules", "container_rules")
STDLIB_ALLOWED = frozenset({"datetime", "zoneinfo", "dataclasses", "typing", "collections.abc",
                            "re", "hashlib", "functools", "enum", "__future__"})
EXTRA_ALLOWED = {"spec": frozenset({"pydantic"}), "urls": frozenset({"urllib", "ipaddress"}),
                 "quoting": frozenset({"unicodedata"})}
# Calls that read the clock, a file or the process environment.
FORBIDDEN_CALLS = ("open", "input", "time.time", "time.monotonic", "time.time_ns")
# ``x.now()`` / ``x.today()`` read the clock whatever ``x`` is called (``dt.now`` too).
CLOCK_METHODS = ("now", "utcnow", "today")
FORBIDDEN_ROOTS = ("os", "sys", "subprocess", "time", "random", "socket", "pathlib", "io")

ADAPTERS = ("boot/*.py", "release/*.py", "health.py", "store.py", "durable.py", "audit.py",
            "services.py", "containers.py")
FRONT = ("reconciler.daemon", "reconciler.reconcile", "reconciler.cli")
BACKEND_HELPERS = {"grub": {"grubenv", "abvars"}, "uboot": {"ubootenv", "abvars"},
                   "bls": {"blsentry"}}


# ---- the checker ----------------------------------------------------------------------------

def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_root(path: Path) -> Path:
    """The nearest enclosing ``reconciler`` directory (the real one or a test's fake)."""
    return next(p for p in path.parents if p.name == "reconciler")


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import; ``from X import a`` yields X and X.a."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path, _package_root(path))
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def forbidden_calls(path: Path) -> Iterator[tuple[int, str]]:
    """(line, call) for every call that reads the clock, a file or the environment."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        if name in FORBIDDEN_CALLS or name.rpartition(".")[2] in CLOCK_METHODS and "." in name:
            yield node.lineno, name
        elif name.split(".")[0] in FORBIDDEN_ROOTS and "." in name:
            yield node.lineno, name


def core_violations(path: Path, allowed_extra: frozenset[str] = frozenset()) -> list[str]:
    """What makes ``path`` impure, as ``file:line: problem`` lines (empty: pure)."""
    core = {f"reconciler.{m}" for m in CORE}
    problems = []
    for line, module in imported_modules(path):
        top = module.split(".")[0]
        ok = (module in STDLIB_ALLOWED or module.startswith("collections.abc")
              or module.rpartition(".")[0] in STDLIB_ALLOWED or top in allowed_extra
              or module in core or module.rpartition(".")[0] in core
              or module == "reconciler")
        if not ok:
            problems.append(f"{path.name}:{line}: imports {module}")
    for line, call in forbidden_calls(path):
        problems.append(f"{path.name}:{line}: calls {call}")
    return sorted(problems, key=lambda p: int(p.split(":")[1]))


def imports_of(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Imports of ``path`` that are, or are inside, one of ``prefixes``."""
    return [f"{path.name}:{line}: imports {module}"
            for line, module in sorted(imported_modules(path))
            if any(module == p or module.startswith(p + ".") for p in prefixes)]


# ---- the rules ------------------------------------------------------------------------------

@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_only_allowed_modules_and_reads_no_clock_or_file(module: str) -> None:
    path = PACKAGE / f"{module}.py"
    assert path.exists(), path
    assert core_violations(path, EXTRA_ALLOWED.get(module, frozenset())) == []


def _adapters() -> list[Path]:
    return sorted({p for pattern in ADAPTERS for p in PACKAGE.glob(pattern)})


@pytest.mark.parametrize("path", _adapters(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_adapters_do_not_import_the_daemon_or_the_cli(path: Path) -> None:
    assert imports_of(path, FRONT) == []


def _backends() -> list[Path]:
    return sorted(p for p in (PACKAGE / "boot").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", _backends(), ids=lambda p: p.name)
def test_boot_backends_do_not_import_each_other(path: Path) -> None:
    allowed = BACKEND_HELPERS.get(path.stem, set()) | {path.stem}
    others = tuple(f"reconciler.boot.{p.stem}" for p in _backends() if p.stem not in allowed)
    assert imports_of(path, others) == []


#: What the simulator may never import: it starts ``kruxos daemon`` as a process and
#: plays only the device's parts (bootloader, OS, channel server), as a real device would.
RECONCILER_SIDE = ("reconciler.daemon", "reconciler.reconcile", "reconciler.executor",
                   "reconciler.decide", "reconciler.observe", "reconciler.overrides",
                   "reconciler.staging",
                   "reconciler.audit", "reconciler.channelwatch", "reconciler.inbox",
                   "reconciler.cli")


@pytest.mark.parametrize("path", sorted((PACKAGE / "sim").glob("*.py")), ids=lambda p: p.name)
def test_the_simulator_drives_the_daemon_only_as_a_process(path: Path) -> None:
    assert imports_of(path, RECONCILER_SIDE) == []


#: What a bootloader backend may never know: it reads and writes its own env
#: (through the durable-write helpers), never the state store or the audit trail.
BACKEND_FORBIDDEN = ("reconciler.store", "reconciler.state", "reconciler.audit",
                     "reconciler.executor", "reconciler.observe", "reconciler.decide")


@pytest.mark.parametrize("path", sorted((PACKAGE / "boot").glob("*.py")), ids=lambda p: p.name)
def test_boot_backends_know_no_store_or_audit(path: Path) -> None:
    assert imports_of(path, BACKEND_FORBIDDEN) == []


#: The CLI presents; it does not decide or write. Deciding lives in ``decide``
#: (which the CLI may call, as ``spec plan`` does), acting in the executor.
CLI_FORBIDDEN_IMPORTS = ("reconciler.semver", "reconciler.executor", "reconciler.staging",
                         "reconciler.release.installer", "reconciler.boot", "reconciler.durable")
#: Methods that change the device: the state store's writers, the backends' marks.
CLI_FORBIDDEN_CALLS = ("put", "update", "set_mark", "arm_trial", "mark_good", "rollback",
                       "repair", "atomic_write", "atomic_write_json")


def cli_violations(path: Path) -> list[str]:
    """Imports of deciding or writing modules, and calls of writing methods, in ``path``."""
    problems = imports_of(path, CLI_FORBIDDEN_IMPORTS)
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            name = _dotted(node.func) or ""
            if "." in name and name.rpartition(".")[2] in CLI_FORBIDDEN_CALLS:
                problems.append(f"{path.name}:{node.lineno}: calls {name}")
    return problems


@pytest.mark.parametrize("path", sorted((PACKAGE / "cli").glob("*.py")), ids=lambda p: p.name)
def test_the_cli_decides_nothing_and_writes_nothing(path: Path) -> None:
    assert cli_violations(path) == []


def test_the_cli_checker_catches_a_decision_and_a_write(fake_package: Path) -> None:
    (fake_package / "cli").mkdir()
    bad = fake_package / "cli" / "update.py"
    bad.write_text("from reconciler.semver import Version\nimport reconciler.executor\n"
                   "store.put('failed', None)\nbackend.set_mark('B', 'bad')\n"
                   "print(view.update)\n")
    assert cli_violations(bad) == [
        "update.py:1: imports reconciler.semver", "update.py:1: imports reconciler.semver.Version",
        "update.py:2: imports reconciler.executor",
        "update.py:3: calls store.put", "update.py:4: calls backend.set_mark",
    ]


def test_the_adapter_list_matches_the_tree() -> None:
    names = {str(p.relative_to(PACKAGE)) for p in _adapters()}
    assert {"health.py", "store.py", "audit.py", "boot/grub.py"} <= names
    assert any(n.startswith("release/") for n in names)


# ---- the checker proves itself --------------------------------------------------------------

@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    root = tmp_path / "reconciler"
    (root / "boot").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "boot" / "__init__.py").write_text("")
    return root


def test_the_checker_catches_an_adapter_import_in_the_core(fake_package: Path) -> None:
    bad = fake_package / "decide.py"
    bad.write_text("from __future__ import annotations\nimport re\nimport httpx\n"
                   "from nacl.signing import VerifyKey\nfrom reconciler.store import x\n"
                   "from reconciler.actions import Nothing\n")
    assert core_violations(bad) == [
        "decide.py:3: imports httpx",
        "decide.py:4: imports nacl.signing",
        "decide.py:4: imports nacl.signing.VerifyKey",
        "decide.py:5: imports reconciler.store",
        "decide.py:5: imports reconciler.store.x",
    ]


def test_the_checker_catches_clock_file_and_os_use(fake_package: Path) -> None:
    bad = fake_package / "windows.py"
    bad.write_text("import datetime\nfrom datetime import date, datetime as dt\n"
                   "a = datetime.datetime.now()\nb = dt.now()\nc = date.today()\n"
                   "d = open('x')\ne = dt(2026, 1, 1)\n")
    assert core_violations(bad) == [
        "windows.py:3: calls datetime.datetime.now",
        "windows.py:4: calls dt.now",
        "windows.py:5: calls date.today",
        "windows.py:6: calls open",
    ]
    worse = fake_package / "spec.py"
    worse.write_text("import os\nimport time\nx = os.environ.get('A')\ny = time.time()\n")
    assert core_violations(worse) == [
        "spec.py:1: imports os", "spec.py:2: imports time",
        "spec.py:3: calls os.environ.get", "spec.py:4: calls time.time",
    ]


def test_the_checker_allows_pydantic_only_where_told(fake_package: Path) -> None:
    module = fake_package / "spec.py"
    module.write_text("from pydantic import BaseModel\n")
    assert core_violations(module, frozenset({"pydantic"})) == []
    assert core_violations(module) != []


def test_the_checker_catches_relative_imports_of_the_front(fake_package: Path) -> None:
    (fake_package / "boot" / "uboot.py").write_text(
        "from .. import daemon\nfrom ..cli.main import cli\nfrom . import grub\n")
    path = fake_package / "boot" / "uboot.py"
    assert imports_of(path, FRONT) == [
        "uboot.py:1: imports reconciler.daemon",
        "uboot.py:2: imports reconciler.cli.main",
        "uboot.py:2: imports reconciler.cli.main.cli",
    ]
    assert imports_of(path, ("reconciler.boot.grub",)) == [
        "uboot.py:3: imports reconciler.boot.grub"]


def test_a_slot_device_never_loads_the_container_engine_sdk() -> None:
    """The Docker SDK (and ``requests`` under it) costs about 0.1 s at every start; only a
    ``runtime: docker`` device loads it, when its engine is first used."""
    probe = ("import sys, reconciler.cli.main, reconciler.daemon, reconciler.reconcile, "
             "reconciler.executor, reconciler.observe; "
             "print(sorted(m for m in ('docker', 'reconciler.containers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
