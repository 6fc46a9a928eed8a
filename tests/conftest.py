"""The suite's contract, enforced for every test.

- **Tools are declared.** A test that runs a system tool says so with
  ``@pytest.mark.needs_tool("grub-editenv", ...)``; each name must be listed in
  ``tests/tools.list`` (which ``tests/tools.sh`` installs), so no test can
  depend on a tool that CI does not install. Where a tool is missing the test
  is skipped with the tool's name and package.
- **In CI a skipped test is a failure** (``CI`` set in the environment): the
  report names the test and the reason, so a missing tool or a forgotten
  ``skip`` can never pass silently.
- **No time limits inside tests**: hypothesis runs without its per-example
  deadline (a loaded machine is slow, not wrong); figures belong in ``bench/``.
- **Tiers come from where a test lives** (``docs/testing.md``): the real
  bootloader rigs are ``qemu``, the simulated-device flows ``e2e``, the parser
  fuzzers ``fuzz``, the whole device booted from the disk of ``make image``
  (``tests/system/``) ``system``, which only ``make system-test`` runs;
  ``torture`` tests run only in ``make torture``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("kruxos", deadline=None, print_blob=True)
settings.load_profile("kruxos")

TESTS = Path(__file__).resolve().parent
TOOLS_LIST = TESTS / "tools.list"


def listed_tools() -> dict[str, str]:
    """``tests/tools.list``: tool (command or absolute path) -> Debian package (a third
    column, the one make target that installs the tool, is for ``tests/tools.sh``)."""
    tools = {}
    for line in TOOLS_LIST.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            tool, package, *_target = line.split()
            tools[tool] = package
    return tools


def tool_present(tool: str) -> bool:
    """A path exists, or a command is on ``PATH``."""
    return Path(tool).exists() if tool.startswith("/") else shutil.which(tool) is not None


def in_ci() -> bool:
    """CI sets ``CI`` (``.ci/run`` runs with ``CI=true``)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


#: Unit tests outside the end-to-end tiers that start the simulated OS as a process.
SIM_PROCESS_TESTS = ("test_sim_os.py", "test_health.py")


def _tier_of(path: Path) -> str | None:
    relative = path.relative_to(TESTS).as_posix()
    if relative.startswith("boot/") and path.stem.endswith("_qemu"):
        return "qemu"
    if relative.startswith(("e2e/", "e2e_update/")) or (
            relative.startswith("boot/") and path.stem.endswith("_sim")):
        return "e2e"
    if relative == "test_docs_executed.py":
        return "e2e"  # the docs run on simulated devices
    if relative.startswith("fuzz/"):
        return "fuzz"
    if relative.startswith("system/"):
        return "system"  # boots the disk of `make image` under QEMU: make system-test only
    if relative.startswith("powercut/test_device_cuts"):
        return "slow"  # a device cut boots the device twice: make test, not make quick
    if relative.startswith("containers/"):
        return "slow"  # a real container engine and registry: make test, not make quick
    if relative.startswith("crash/test_crash_matrix"):
        return "slow"  # each crash boots a device at least twice: make test, not make quick
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier; refuse a tool name that ``tools.list`` lacks."""
    listed = listed_tools()
    for item in items:
        tier = _tier_of(Path(str(item.path)))
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
        if tier in ("e2e", "slow") or Path(str(item.path)).name in SIM_PROCESS_TESTS:
            item.add_marker(pytest.mark.needs_tool("setpriv"))  # reconciler/sim/os.py
        for marker in item.iter_markers("needs_tool"):
            unknown = [tool for tool in marker.args if tool not in listed]
            if unknown or not marker.args:
                raise pytest.UsageError(f"{item.nodeid}: needs_tool names {unknown or 'nothing'}"
                                        f"; every tool must be listed in {TOOLS_LIST}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (outside CI) a test whose declared tools are missing, naming them."""
    listed = listed_tools()
    missing = sorted({tool for marker in item.iter_markers("needs_tool")
                      for tool in marker.args if not tool_present(tool)})
    if missing:
        packages = sorted({listed[tool] for tool in missing})
        pytest.skip(f"not installed: {', '.join(missing)} (packages: {' '.join(packages)}; "
                    "run tests/tools.sh as root)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """In CI, turn every skip into a failure that says why the test was skipped."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI, which counts as a failure: {reason}\n"
                           "(a test's tools are installed by tests/tools.sh; a test is "
                           "never skipped silently)")


@pytest.fixture
def device_dir(tmp_path: Path) -> Path:
    """A simulated device dir, booted on slot A (``boot-1``), with no process running:
    for the tests that run a reconciler in-process."""
    from reconciler.sim.device import init_device

    init_device(tmp_path / "dev")
    (tmp_path / "dev" / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    (tmp_path / "dev" / "run" / "boot_id").write_text("boot-1\n")
    return tmp_path / "dev"
