"""Failpoints: parsed strictly, free when unset, a real SIGKILL at the armed hit.

Each case that arms a point runs a child process, since the plan is read once
at import (as in the daemon) and a kill must kill something.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import failpoints

REPO = Path(__file__).resolve().parents[1]


def _child(code: str, armed: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(failpoints.ENV, None)
    if armed is not None:
        env[failpoints.ENV] = armed
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_plain_kill_is_the_first_hit_and_kill_at_n_the_nth() -> None:
    assert failpoints.parse("a.b=kill, c-d.e=kill@7, f.g=stop, h.i=stop@2") == {
        "a.b": (1, "kill"), "c-d.e": (7, "kill"), "f.g": (1, "stop"), "h.i": (2, "stop")}


@pytest.mark.parametrize("item", ["a.b=kill@0", "a.b=crash", "A.b=kill", "a.b", "=kill",
                                  "a.b=kill@", "a.b=kill@1x", "a.b=stop@0", "a.b=stopped"])
def test_a_bad_item_is_refused_naming_it(item: str) -> None:
    with pytest.raises(ValueError, match=r"is not name=kill, name=stop, name=kill@N"):
        failpoints.parse(f"ok.point=kill, {item}")


def test_unset_the_point_is_an_empty_function_and_does_nothing() -> None:
    code = ("from reconciler import failpoints as f\n"
            "f.failpoint('install.block-written')\n"
            "print(f.ARMED, f.failpoint is f._unarmed)\n")
    result = _child(code, None)
    assert result.returncode == 0 and result.stdout.split() == ["False", "True"], result


def test_an_armed_point_kills_the_process_by_sigkill_at_the_nth_hit_only() -> None:
    code = ("from reconciler.failpoints import failpoint\n"
            "for n in range(1, 6):\n"
            "    failpoint('other.point')\n"
            "    failpoint('x.y')\n"
            "    print(n, flush=True)\n")
    result = _child(code, "x.y=kill@3")
    assert result.returncode == -signal.SIGKILL, result
    assert result.stdout.split() == ["1", "2"]
    result = _child(code, "x.y=kill")
    assert result.returncode == -signal.SIGKILL and result.stdout == "", result


def test_a_stop_point_holds_the_process_stopped_at_the_nth_hit() -> None:
    """What the QEMU device's power cuts wait for: the process stopped at that line."""
    code = ("from reconciler.failpoints import failpoint\n"
            "for n in range(1, 6):\n"
            "    failpoint('x.y')\n"
            "    print(n, flush=True)\n")
    env = dict(os.environ, **{failpoints.ENV: "x.y=stop@3"})
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        waited = os.waitpid(child.pid, os.WUNTRACED)[1]
        assert os.WIFSTOPPED(waited) and os.WSTOPSIG(waited) == signal.SIGSTOP, waited
        child.send_signal(signal.SIGCONT)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert out.split() == ["1", "2", "3", "4", "5"]  # stopped before the 3rd print only


def test_a_bad_variable_stops_the_process_at_import_naming_the_item() -> None:
    result = _child("import reconciler.failpoints", "x.y=kill@zero")
    assert result.returncode == 1 and "'x.y=kill@zero' is not name=kill" in result.stderr


@pytest.mark.parametrize(("stage", "content", "temp_left"), [
    ("temp-written", b"old", True),
    ("renamed", b"new", False),
])
def test_a_labelled_durable_write_dies_at_its_stage(tmp_path: Path, stage: str,
                                                    content: bytes, temp_left: bool) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    code = ("from pathlib import Path\n"
            "from reconciler.durable import atomic_write\n"
            f"atomic_write(Path({str(target)!r}), b'new', label='state')\n"
            "print('survived')\n")
    result = _child(code, f"state.{stage}=kill")
    assert result.returncode == -signal.SIGKILL and "survived" not in result.stdout, result
    assert target.read_bytes() == content
    assert bool(list(tmp_path.glob(".state.json.tmp-*"))) == temp_left


def _documented() -> list[str]:
    """The point names of the table in ``reconciler/failpoints.py``'s docstring."""
    doc = failpoints.__doc__ or ""
    return re.findall(r"(?m)^``([a-z][a-zA-Z0-9.-]*)``\s", doc)


def _source() -> str:
    return "\n".join(p.read_text() for p in sorted((REPO / "reconciler").rglob("*.py")))


def test_every_point_in_the_table_is_in_the_code_and_every_call_in_the_table() -> None:
    documented, source = _documented(), _source()
    assert len(documented) >= 25, documented
    for name in documented:
        if name == "decided.KIND":
            assert 'failpoint(f"decided.{action.kind}")' in source
            continue
        label, _, stage = name.rpartition(".")
        labelled = stage in ("temp-written", "renamed") and f'label="{label}"' in source
        assert labelled or f'failpoint("{name}")' in source, f"{name}: documented, not in code"
    called = set(re.findall(r'failpoint\("([a-z0-9.-]+)"\)', source))
    labels = {f"{label}.{stage}" for label in re.findall(r'label="([a-z-]+)"', source)
              for stage in ("temp-written", "renamed")}
    assert not (called | labels) - set(documented), "points in the code, not in the table"


def test_the_crash_matrix_kills_at_documented_points_only() -> None:
    from tests.crash.matrix import POINTS
    documented = set(_documented())
    for point in POINTS:
        kind = "decided.KIND" if point.name.startswith("decided.") else point.name
        assert kind in documented, point.name
