"""A service update on the device's own files: what ``observe`` reads back (the state file, the
service store, the channel's components) and what the executor's service actions leave there.

Real files, a real service store, real restart commands (``true``/``false`` stand in
for ``systemctl restart``); the end-to-end path with the simulated OS's own service
processes is ``tests/e2e/test_service_update.py``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.actions import (
    Blocked,
    Confirm,
    ConfirmServices,
    KeepServices,
    RestartServices,
    RestoreServices,
    RollbackServices,
    SwitchServices,
)
from reconciler.channelwatch import view_of
from reconciler.config import Device, load_device
from reconciler.decide import decide
from reconciler.executor import Executor, affected_answer
from reconciler.health import HealthAnswer
from reconciler.observe import backend_for, observe
from reconciler.observed import ChannelView
from reconciler.release.channel import ServiceSource, add_release, init_channel
from reconciler.release.identity import read_identity
from reconciler.release.metadata import ChannelMetadata, ServiceArtifact
from reconciler.service_runtime import ServiceRuntime
from reconciler.services import ServiceStore
from reconciler.store import StateStore
from tests.test_decide import policy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BODY = b"SERVICE=gateway\nVERSION=1.0.2\nBEHAVIOUR=healthy\n"
GW = ServiceArtifact("gateway", "1.0.2", "gateway-1.0.2.svc", len(BODY),
                     hashlib.sha256(BODY).hexdigest(), 4096,
                     (hashlib.sha256(BODY).hexdigest(),))


def _device(device_dir: Path, restart: tuple[str, ...] = ("true",)) -> Device:
    return replace(load_device(device_dir / "device.yaml"), restart_command=restart)


def _root(device: Device, slot: str = "A") -> str:
    identity, _ = read_identity(device.slot_paths[slot])  # type: ignore[index]
    assert identity is not None
    return identity.sha256


def _look(device: Device, channel: ChannelView | None = None) -> Any:
    return observe(device, StateStore(device.data_dir), backend_for(device), channel)


def _staged(device: Device) -> tuple[StateStore, ServiceStore, str]:
    """``gateway 1.0.2`` verified into the store and recorded staged, as StageServices
    leaves it."""
    state, services = StateStore(device.data_dir), ServiceStore(device.services_dir,
                                                                device.data_dir)
    services.stage(GW, io.BytesIO(BODY).read)
    root = _root(device)
    state.put("service_update", {
        "version": "1.0.2", "from_version": "1.0.0", "services": ["gateway"],
        "step": "staged", "root_sha256": root,
        "artifacts": {"gateway": {"version": "1.0.2", "sha256": GW.sha256, "size": GW.size}}})
    return state, services, root


def _executor(device: Device) -> Executor:
    def no_reboot(reason: str) -> None:
        raise AssertionError(f"a service update never reboots ({reason})")

    return Executor(device, StateStore(device.data_dir), backend_for(device), None,  # type: ignore[arg-type]
                    no_reboot, lambda: NOW, services=ServiceRuntime(device, None))  # type: ignore[arg-type]


def test_the_channel_view_says_what_each_release_is_made_of(tmp_path: Path) -> None:
    image = tmp_path / "root.img"
    image.write_bytes(b"\0" * 8192)
    artifact = tmp_path / "gw"
    artifact.write_bytes(BODY)
    channel = tmp_path / "channel"
    init_channel(channel, "stable")
    one = add_release(channel, image, "1.0.1", ["one"])
    two = add_release(channel, image, "1.0.2", ["two"],
                      services=[ServiceSource("gateway", "1.0.2", artifact)])
    meta = ChannelMetadata("stable", 1, NOW, NOW, (one, two))
    view = view_of(meta)
    assert view.components["1.0.2"].root_sha256 == view.components["1.0.1"].root_sha256
    assert view.components["1.0.2"].services["gateway"].sha256 == GW.sha256
    assert view.components["1.0.1"].services == {}


def test_a_committed_service_release_runs_only_on_the_root_image_it_was_made_on(
        device_dir: Path) -> None:
    device = _device(device_dir)
    state = StateStore(device.data_dir)
    state.put("service_releases", {_root(device): "1.0.2", "f" * 64: "9.9.9"})
    seen = _look(device)
    assert (seen.service_release, seen.running_version) == ("1.0.2", "1.0.2")

    state.put("service_releases", {"f" * 64: "1.0.2"})  # made on another root image
    seen = _look(device)
    assert (seen.service_release, seen.running_version) == (None, "1.0.0")


def test_a_switch_the_state_file_did_not_record_is_read_back_from_the_store(
        device_dir: Path) -> None:
    device = _device(device_dir)
    _, services, root = _staged(device)
    assert _look(device).service_update.step == "staged"
    services.switch(root, "1.0.0", "gateway", GW)  # a crash right after the store's switch
    update = _look(device).service_update
    assert (update.step, update.version, update.services) == ("switched", "1.0.2",
                                                              ("gateway",))


def test_an_update_made_on_another_root_image_is_not_this_boots(device_dir: Path) -> None:
    device = _device(device_dir)
    state, _, _ = _staged(device)
    state.update(lambda doc: doc["service_update"].update(root_sha256="e" * 64))
    assert _look(device).service_update is None


def test_switch_restart_probe_confirm_commits_the_store_and_records_what_runs(
        device_dir: Path) -> None:
    device = _device(device_dir)
    state, services, root = _staged(device)
    executor = _executor(device)
    spec = policy("1.0.2")

    switched = executor.run(SwitchServices("1.0.2", ("gateway",), "test"), spec)
    assert switched.code == "ok", switched
    record = services.record(root, "gateway")
    assert record is not None and record.uncommitted and record.current is not None
    assert state.section("service_update")["policy"]["timeout_s"] == 120.0

    restarted = executor.run(RestartServices("1.0.2", ("gateway",), "test"), spec)
    assert restarted.code == "ok" and _look(device).service_update.step == "restarted"

    confirmed = executor.run(ConfirmServices("1.0.2", ("gateway",), "test"), spec)
    assert confirmed.code == "ok", confirmed
    record = services.record(root, "gateway")
    assert record is not None and not record.uncommitted
    assert record.current is not None and record.current.sha256 == GW.sha256
    assert state.section("service_releases") == {root: "1.0.2"}
    assert not state.section("service_update")
    assert _look(device).running_version == "1.0.2"
    assert _look(device).overlays == (("gateway", "1.0.2", None),)


def test_a_restart_that_fails_is_a_failed_outcome_and_the_step_stays(device_dir: Path) -> None:
    device = _device(device_dir, restart=("false",))
    _staged(device)
    executor = _executor(device)
    executor.run(SwitchServices("1.0.2", ("gateway",), "test"), policy("1.0.2"))
    outcome = executor.run(RestartServices("1.0.2", ("gateway",), "test"), policy("1.0.2"))
    assert outcome.code == "failed" and "restarting gateway failed (1)" in outcome.detail
    assert _look(device).service_update.step == "switched"


def test_a_restart_after_a_crash_between_record_and_link_starts_what_the_record_says(
        device_dir: Path) -> None:
    """A kill after the record's rename leaves the old ``current`` link; the restart (a new
    daemon: the store not opened yet) must not start the service from it."""
    device = _device(device_dir)
    _, services, root = _staged(device)
    services.switch(root, "1.0.0", "gateway", GW)
    link = services.path_of(root, "gateway")
    link.unlink()  # as service-record.renamed=kill leaves it: the record new, no link yet
    checking = _device(device_dir, restart=("sh", "-c", f'test "$(readlink -f {link})" = '
                                            f'"{services.objects / GW.sha256}"', "sh"))
    outcome = _executor(checking).run(RestartServices("1.0.2", ("gateway",), "test"),
                                      policy("1.0.2"))
    assert outcome.code == "ok", outcome  # the link agreed with the record before the restart


def test_a_restore_that_began_is_finished_by_the_next_pass_never_confirmed(
        device_dir: Path) -> None:
    device = _device(device_dir)
    state, services, root = _staged(device)
    executor = _executor(device)
    executor.run(SwitchServices("1.0.2", ("gateway",), "test"), policy("1.0.2"))
    executor.run(RestartServices("1.0.2", ("gateway",), "test"), policy("1.0.2"))
    # The restore kept the failure, then the device lost power before the store changed.
    state.update(lambda doc: doc["service_update"].update(restoring="gateway failed to start"))
    seen = _look(device, ChannelView(versions=frozenset({"1.0.0", "1.0.2"})))
    action = decide(policy("1.0.2"), seen, NOW)
    assert isinstance(action, RestoreServices), action
    assert action.reason == "gateway failed to start" and action.services == ("gateway",)

    outcome = executor.run(action, policy("1.0.2"))
    assert outcome.code == "ok" and "no reboot" in outcome.detail, outcome
    record = services.record(root, "gateway")
    assert record is not None and record.current is None and not record.uncommitted
    assert not (services.path_of(root, "gateway")).exists()  # the image's own runs again
    assert state.section("failed")["version"] == "1.0.2"
    assert not state.section("service_update")
    assert _look(device).overlays == ()  # restored to the image's own: nothing to show
    after = _look(device, ChannelView(versions=frozenset({"1.0.0", "1.0.2"})))
    assert "not retried" in decide(policy("1.0.2"), after, NOW).reason


def test_only_the_affected_services_count_in_a_health_answer() -> None:
    scheduler_down = HealthAnswer(False, 503, {"scheduler": "crashed"})
    assert affected_answer(scheduler_down, ("gateway",)).healthy
    assert not affected_answer(scheduler_down, ("scheduler",)).healthy
    both = HealthAnswer(False, 503, {"gateway": "starting", "scheduler": "crashed"})
    judged = affected_answer(both, ("gateway",))
    assert not judged.healthy and judged.failing == {"gateway": "starting"}
    assert not affected_answer(HealthAnswer(False, 503), ("gateway",)).healthy  # says nothing
    assert not affected_answer(HealthAnswer(False, None, error="refused"), ("gateway",)).healthy
    assert affected_answer(HealthAnswer(True, 200), ("gateway",)).healthy


def test_confirming_a_slot_update_retires_the_overlays_of_roots_no_slot_holds(
        device_dir: Path) -> None:
    device = _device(device_dir)
    state, services, root = _staged(device)
    services.switch("c" * 64, "0.9.0", "gateway", GW)  # an overlay of a root long gone
    services.commit("c" * 64, "gateway")
    state.put("service_releases", {root: "1.0.2", "c" * 64: "0.9.9"})
    outcome = _executor(device).run(Confirm("A", "1.0.0", "test"), policy("1.0.0"))
    assert outcome.code == "ok" and "1 old root image(s)' service overlays retired" \
        in outcome.detail, outcome
    assert not (services.roots / ("c" * 64)).exists()
    assert state.section("service_releases") == {root: "1.0.2"}


# ---- data copies, an irreversible migration, a person's rollback of a committed update -------

def _confirmed(device: Device, artifact: dict[str, Any] | None = None) -> tuple[StateStore,
                                                                               ServiceStore, str]:
    """``gateway 1.0.2`` switched, restarted and confirmed over 1.0.0 (the image's own)."""
    state, services, root = _staged(device)
    if artifact:
        state.update(lambda doc: doc["service_update"]["artifacts"]["gateway"].update(artifact))
    executor = _executor(device)
    for step in (SwitchServices, RestartServices, ConfirmServices):
        assert executor.run(step("1.0.2", ("gateway",), "test"), policy("1.0.2")).ok
    return state, services, root


def _request_rollback(state: StateStore) -> None:
    """A person's rollback, as the take of the request writes it (bound to this boot)."""
    state.put("request", {"kind": "rollback", "boot_id": "boot-1", "slot": "A",
                          "version": "1.0.0"})


def test_a_persons_rollback_of_a_committed_update_reverts_the_store_and_blocks_it(
        device_dir: Path) -> None:
    device = _device(device_dir)
    data = device.service_data_dir / "gateway"
    data.mkdir(parents=True)
    (data / "rows").write_bytes(b"as 1.0.0 keeps them")
    state, services, root = _confirmed(device, {"data_dir": "gateway"})
    (data / "rows").write_bytes(b"migrated by 1.0.2")  # 1.0.2 ran and changed its data
    assert state.section("service_last")[root]["from_version"] == "1.0.0"
    _request_rollback(state)
    seen = _look(device, ChannelView(versions=frozenset({"1.0.0", "1.0.2"})))
    action = decide(policy("1.0.2"), seen, NOW)
    assert isinstance(action, RollbackServices) and action.version == "1.0.2", action

    outcome = _executor(device).run(action, policy("1.0.2"))
    assert outcome.code == "ok", outcome
    assert "gateway's data (gateway) put back as it was under 1.0.0" in outcome.detail
    assert (data / "rows").read_bytes() == b"as 1.0.0 keeps them"
    record = services.record(root, "gateway")
    assert record is not None and record.current is None and not record.uncommitted
    assert not services.path_of(root, "gateway").exists()  # the image's own runs again
    assert state.section("failed")["version"] == "1.0.2"
    for gone in ("request", "service_update", "service_last", "service_releases"):
        assert not state.section(gone), gone
    after = _look(device, ChannelView(versions=frozenset({"1.0.0", "1.0.2"})))
    assert after.running_version == "1.0.0" and after.service_last is None
    blocked = decide(policy("1.0.2"), after, NOW)
    assert isinstance(blocked, Blocked) and "1.0.2 was rolled back" in blocked.reason


def test_a_crash_in_a_persons_service_rollback_is_finished_by_the_next_pass(
        device_dir: Path) -> None:
    device = _device(device_dir)
    state, services, root = _confirmed(device)
    last = state.section("service_last")[root]
    # The rollback wrote its start (as RollbackServices does), then the power went: the
    # store still runs 1.0.2, committed.
    state.put("service_update", {"version": "1.0.2", "from_version": "1.0.0",
                                 "services": ["gateway"], "step": "restarted",
                                 "root_sha256": root, "restoring": "manual",
                                 "artifacts": last["artifacts"]})
    state.put("failed", {"version": "1.0.2", "reason": "manual", "at": NOW.isoformat()})
    action = decide(policy("1.0.2"), _look(device), NOW)
    assert isinstance(action, RestoreServices) and action.reason == "manual", action
    executor = _executor(device)
    assert executor.run(action, policy("1.0.2")).ok
    record = services.record(root, "gateway")
    assert record is not None and record.current is None and not record.uncommitted
    for gone in ("service_update", "service_last", "service_releases"):
        assert not state.section(gone), gone
    assert _look(device).running_version == "1.0.0"


def test_a_failed_update_that_migrated_irreversibly_is_kept_and_never_rolled_back(
        device_dir: Path) -> None:
    device = _device(device_dir)
    state, services, root = _staged(device)
    state.update(lambda doc: doc["service_update"]["artifacts"]["gateway"].update(
        migrates_data=True))
    executor = _executor(device)
    for step in (SwitchServices, RestartServices):
        assert executor.run(step("1.0.2", ("gateway",), "test"), policy("1.0.2")).ok
    state.update(lambda doc: doc["service_update"].update(health={
        "first_probe_at": "2026-12-01T11:50:00+00:00", "consecutive_ok": 0, "probes": 3,
        "timeout_reason": "Health check timeout — gateway: failed to start"}))
    seen = _look(device)
    assert seen.service_update.irreversible == ("gateway",)
    action = decide(policy("1.0.2"), seen, NOW)
    assert isinstance(action, KeepServices), action
    outcome = executor.run(action, policy("1.0.2"))
    assert outcome.ok and "1.0.2 kept" in outcome.detail, outcome
    record = services.record(root, "gateway")
    assert record is not None and not record.uncommitted and record.current is not None
    assert state.section("service_last")[root]["kept"] == action.reason
    assert not state.section("failed")
    _request_rollback(state)
    refused = decide(policy("1.0.2"), _look(device), NOW)
    assert refused.kind == "request-refused" and "cannot roll back 1.0.2" in refused.reason
    assert executor.run(refused, policy("1.0.2")).ok
    assert not state.section("request")  # forgotten: it never rolls a slot back later

