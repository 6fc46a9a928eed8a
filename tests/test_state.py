"""The typed state file: schema, migration from today's file, refusals, the copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.errors import StateError
from reconciler.state import SCHEMA, dump_state, parse_state
from reconciler.store import StateStore

#: A state.json as the releases before the schema wrote it (schema 1, no "schema" key).
TODAY = {
    "audit": {"seq": 12, "hash": "ab" * 32, "repeats": 3, "repeats_of": 11},
    "trial": {"boot_id": "b-7", "slot": "B", "first_probe_at": "2026-11-30T12:00:00+00:00",
              "last_probe_at": "2026-11-30T12:00:05+00:00", "consecutive_ok": 0, "probes": 2,
              "last_summary": "503: gateway starting",
              "last_answer": {"healthy": False, "status": 503, "failing": [], "error": None},
              "timeout_reason": "Health check timeout — gateway failed to start"},
    "failed": {"version": "1.0.2", "reason": "Health check timeout", "at": "2026-11-29"},
    "override": {"version": "1.0.1", "actor": "cli", "reboot": "ask", "paused": False,
                 "by": "root on tty1", "at": 1764500000.5, "spec_revision": "abc123def456",
                 "spec_wanted": "1.0.0"},
    "request": {"kind": "rollback"},
    "spec": {"rejected": "0123456789ab"},
}


def test_todays_state_file_migrates_to_the_current_schema_keeping_every_fact() -> None:
    model, dropped = parse_state(TODAY)
    assert dropped == []
    assert model.schema_version == SCHEMA == 3
    assert model.audit is not None and model.audit.seq == 12
    assert model.failed is not None and model.failed.version == "1.0.2"
    out = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    for section in TODAY:
        assert section in out, section
    assert out["schema"] == 3
    written = dump_state(out)
    assert "audit" not in written, "the head lives in audit/head.json; it is not written back"
    assert "spec" not in written, "the spec keeper keeps the rejected revision"
    assert set(written) == set(TODAY) - {"audit", "spec"} | {"schema"}


def test_a_section_that_does_not_fit_is_dropped_and_named() -> None:
    bad = dict(TODAY, trial={"boot_id": "b-7", "slot": "C"}, failed="1.0.2")
    model, dropped = parse_state(bad)
    assert model.trial is None and model.failed is None
    assert [d.split(" ")[0] for d in dropped] == ["trial", "failed"]
    assert model.audit is not None  # the rest is kept


@pytest.mark.parametrize("raw", [[1, 2], "text", {"schema": 99}, {"schema": "2"}])
def test_what_is_no_state_file_of_this_release_is_refused(raw: object) -> None:
    with pytest.raises(StateError):
        parse_state(raw)


def test_a_write_that_breaks_the_model_is_refused_not_written() -> None:
    with pytest.raises(StateError, match="trial"):
        dump_state({"trial": {"boot_id": "x", "slot": "Z"}})


def test_a_damaged_state_file_is_restored_from_its_copy(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.update(lambda doc: doc.update(failed={"version": "1.0.2", "reason": "x"}))
    store.path.write_bytes(b"\x00\x01 not json")
    assert store.load()["failed"]["version"] == "1.0.2"
    assert any("restored from state.copy.json" in r for r in store.take_repairs())
    assert not store.lost
    store.update(lambda doc: None)  # the next write repairs the file itself
    assert json.loads(store.path.read_text())["failed"]["version"] == "1.0.2"


def test_both_copies_lost_is_a_rebuild_and_a_fresh_device_is_not(tmp_path: Path) -> None:
    fresh = StateStore(tmp_path / "fresh")
    assert fresh.load() == {} and not fresh.lost and fresh.take_repairs() == []
    store = StateStore(tmp_path)
    store.update(lambda doc: doc.update(failed={"version": "1.0.2"}))
    store.path.write_text("{")
    store.copy_path.unlink()
    assert store.load() == {}
    assert store.lost
    assert "rebuilt" in store.take_repairs()[0]
