"""The suite's own contract (tests/conftest.py), run on small throwaway suites.

A skip must fail CI with its reason; a test's tools must be listed in
tests/tools.list; a listed tool that is missing skips (outside CI) naming its
package. Each case runs pytest in a child process on a suite made here, with
this repository's conftest and a tools list of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SUITE = '''
import pytest

def test_plain():
    assert True

@pytest.mark.needs_tool("/nonexistent/kruxos-tool")
def test_needs_a_missing_tool():
    assert True

@pytest.mark.needs_tool("sh")
def test_needs_a_present_tool():
    assert True

def test_skips_by_itself():
    pytest.skip("the reason the test gave")
'''


def _suite(tmp_path: Path, body: str = SUITE) -> Path:
    root = tmp_path / "suite"
    root.mkdir()
    shutil.copy(TESTS / "conftest.py", root / "conftest.py")
    (root / "tools.list").write_text("# tool package\n/nonexistent/kruxos-tool kruxos-pkg\n"
                                     "sh dash\n")
    (root / "test_suite.py").write_text(body)
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    needs_tool(*names): tools\n"
                                     "    e2e: e\n    qemu: q\n    fuzz: f\n")
    return root


def _run(root: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           str(root)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_outside_ci_a_missing_tool_skips_naming_the_tool_and_its_package(tmp_path: Path) -> None:
    result = _run(_suite(tmp_path), ci=None)
    assert result.returncode == 0, result.stdout
    assert "2 passed, 2 skipped" in result.stdout, result.stdout
    assert "not installed: /nonexistent/kruxos-tool (packages: kruxos-pkg" in result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_every_skip_is_a_failure_that_says_why(tmp_path: Path, ci: str) -> None:
    result = _run(_suite(tmp_path), ci=ci)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 2 passed, 1 error" in result.stdout, result.stdout  # setup or call
    assert "skipped in CI, which counts as a failure" in result.stdout
    assert "not installed: /nonexistent/kruxos-tool" in result.stdout
    assert "the reason the test gave" in result.stdout


def test_ci_false_is_not_ci(tmp_path: Path) -> None:
    assert _run(_suite(tmp_path), ci="false").returncode == 0


def test_a_tool_missing_from_the_list_is_a_usage_error(tmp_path: Path) -> None:
    body = ('import pytest\n\n@pytest.mark.needs_tool("gcc-unlisted")\n'
            "def test_x():\n    assert True\n")
    result = _run(_suite(tmp_path, body), ci=None)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "needs_tool names ['gcc-unlisted']" in result.stdout + result.stderr


def test_every_tool_the_rigs_declare_is_in_the_list() -> None:
    from tests.boot import bls_rig, grub_rig, uboot_rig
    from tests.conftest import listed_tools
    listed = listed_tools()
    for rig in (grub_rig, uboot_rig, bls_rig):
        assert set(rig.TOOLS) <= set(listed), (rig.__name__, set(rig.TOOLS) - set(listed))


def test_a_tool_listed_for_one_make_target_is_installed_only_for_that_target(
        tmp_path: Path) -> None:
    """``tests/tools.sh`` passes over a tool whose third column names a target unless that
    target is asked for; then it is missing like any other (no apt-get here: it says so)."""
    root = tmp_path / "tools"
    (root / "bin").mkdir(parents=True)
    shutil.copy(TESTS / "tools.sh", root / "tools.sh")
    (root / "tools.list").write_text(
        "# tool package [target]\n/nonexistent/kruxos-tool kruxos-pkg some-target\n/bin/sh dash\n")
    for command in ("dirname", "id"):  # all it runs besides bash's builtins; no apt-get
        found = shutil.which(command)
        assert found is not None
        (root / "bin" / command).symlink_to(found)

    def tools_sh(*targets: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/bin/bash", str(root / "tools.sh"), *targets],
                              env={"PATH": str(root / "bin")}, capture_output=True, text=True,
                              timeout=60)

    for targets in ((), ("other-target",)):
        plain = tools_sh(*targets)
        assert plain.returncode == 0, plain.stderr
    asked = tools_sh("other-target", "some-target")
    assert asked.returncode == 1 and "tests need: kruxos-pkg" in asked.stderr, asked.stderr
    from tests.conftest import listed_tools
    assert listed_tools()["podman"] == "podman"  # a third column still lists the tool
