"""Phased rollout from the signed channel: the format, the math, ``latest`` and the tools.

The format is checked as a device checks it (every bad field named); the math
by a decision table and properties (monotone in time, a device once reached
stays reached, exact 0 % and 100 % ends, the offer time is the first moment
reached); ``latest`` and the daemon's reasons through ``view_of`` and ``decide``;
the publisher's ``release add --rollout-*`` and ``release rollout`` through the CLI
and a signed, verified channel.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.actions import Nothing, Stage, Wait
from reconciler.channelwatch import view_of
from reconciler.cli.release import release_group
from reconciler.config import Device, rollout_id
from reconciler.decide import decide
from reconciler.errors import ReleaseError
from reconciler.observed import ChannelView, Override
from reconciler.release.features import held_back, newest_installable
from reconciler.release.metadata import ChannelMetadata, verify_metadata
from reconciler.release.rollout import Rollout, parse_rollout, wariness_of
from reconciler.sim.image import build_sim_image
from tests.test_channel_format import KEY, KEYID, _document, _release, _signed
from tests.test_decide import observed, policy

START = datetime(2030, 5, 10, 12, 0, tzinfo=UTC)
NOW = START
FEATURE = ["phased-rollout"]


def _verify(raw: bytes, now: datetime = NOW) -> ChannelMetadata:
    return verify_metadata(raw, {KEYID: KEY.verify_key}, frozenset(), now, None, None)


def _refusal(rollout: Any, requires: list[str] | None = None) -> str:
    rel = _release("1.1.0", rollout=rollout, requires=FEATURE if requires is None else requires)
    with pytest.raises(ReleaseError) as caught:
        _verify(_document(_signed(releases=[_release(), rel])))
    return str(caught.value)


# ---- the format -----------------------------------------------------------------------------

def test_a_signed_rollout_is_read_and_written_back_unchanged() -> None:
    doc = {"start": "2030-05-10T12:00:00Z", "startPercentage": 10, "duration": "2d"}
    meta = _verify(_document(_signed(releases=[
        _release(), _release("1.1.0", rollout=doc, requires=FEATURE)])))
    release = meta.find("1.1.0")
    assert release is not None and release.rollout == Rollout(START, 10, timedelta(days=2))
    assert release.to_json()["rollout"] == doc
    old = meta.find("1.0.0")
    assert old is not None and old.rollout is None and "rollout" not in old.to_json()
    held = _verify(_document(_signed(releases=[_release("1.1.0", requires=FEATURE, rollout={
        "start": "2030-05-10T12:00:00Z"})]))).find("1.1.0")
    assert held is not None and held.rollout == Rollout(START, 0, None)


@pytest.mark.parametrize(("rollout", "requires", "says"), [
    ("soon", None, "releases[1].rollout: expected an object"),
    ({"startPercentage": 5}, None,
     "releases[1].rollout.start: expected a UTC time YYYY-MM-DDTHH:MM:SSZ, got nothing"),
    ({"start": 1}, None, "releases[1].rollout.start: expected a UTC time"),
    ({"start": "tomorrow"}, None,
     "releases[1].rollout.start: 'tomorrow' is not an RFC 3339 time"),
    ({"start": "2030-05-10T12:00:00"}, None, "releases[1].rollout.start: "
     "'2030-05-10T12:00:00' has no time zone (write it in UTC with Z)"),
    ({"start": "2030-05-10T12:00:00Z", "startPercentage": 101}, None,
     "releases[1].rollout.startPercentage: expected an integer from 0 to 100, got 101"),
    ({"start": "2030-05-10T12:00:00Z", "startPercentage": -1}, None,
     "releases[1].rollout.startPercentage: expected an integer from 0 to 100, got -1"),
    ({"start": "2030-05-10T12:00:00Z", "startPercentage": 12.5}, None,
     "releases[1].rollout.startPercentage: expected an integer from 0 to 100, got 12.5"),
    ({"start": "2030-05-10T12:00:00Z", "startPercentage": True}, None,
     "releases[1].rollout.startPercentage: expected an integer from 0 to 100, got true"),
    ({"start": "2030-05-10T12:00:00Z", "duration": "2 days"}, None,
     "releases[1].rollout.duration: '2 days' is not a duration"),
    ({"start": "2030-05-10T12:00:00Z", "duration": "0s"}, None,
     "releases[1].rollout.duration: '0s' is not a positive duration"),
    ({"start": "2030-05-10T12:00:00Z", "duration": "400d"}, None,
     "releases[1].rollout.duration: '400d' is longer than 366d"),
    ({"start": "2030-05-10T12:00:00Z", "duration": 3600}, None,
     "releases[1].rollout.duration: 3600 is not a duration"),
    ({"start": "2030-05-10T12:00:00Z", "percent": 5}, None,
     "releases[1].rollout: unknown field(s) 'percent'"),
    ({"start": "2030-05-10T12:00:00Z"}, [], "releases[1].rollout: a release with a rollout "
     "must require 'phased-rollout'"),
])
def test_a_bad_rollout_refuses_the_document_naming_the_field(
    rollout: Any, requires: list[str] | None, says: str,
) -> None:
    assert says in _refusal(rollout, requires)


def test_a_release_with_a_rollout_is_skipped_by_a_device_without_the_feature() -> None:
    meta = _verify(_document(_signed(releases=[_release(), _release(
        "1.1.0", requires=FEATURE, rollout={"start": "2030-01-01T00:00:00Z",
                                            "startPercentage": 100})])))
    older = newest_installable(meta, frozenset(), now=NOW, wariness=Fraction(0))
    assert older is not None and older.version == "1.0.0"
    newer = newest_installable(meta, now=NOW, wariness=Fraction(0))
    assert newer is not None and newer.version == "1.1.0"


# ---- the math -------------------------------------------------------------------------------

RAMP = Rollout(START, 10, timedelta(hours=90))  # 1 % an hour from 10 %


@pytest.mark.parametrize(("rollout", "at", "share"), [
    (RAMP, START - timedelta(seconds=1), Fraction(0)),
    (RAMP, START, Fraction(10)),
    (RAMP, START + timedelta(hours=27), Fraction(37)),
    (RAMP, START + timedelta(minutes=30), Fraction(21, 2)),
    (RAMP, START + timedelta(hours=90), Fraction(100)),
    (RAMP, START + timedelta(days=400), Fraction(100)),
    (Rollout(START, 0, timedelta(hours=1)), START, Fraction(0)),
    (Rollout(START, 100, timedelta(hours=1)), START, Fraction(100)),
    (Rollout(START, 40, None), START + timedelta(days=300), Fraction(40)),
    (Rollout(START, 40, None), START - timedelta(days=1), Fraction(0)),
])
def test_the_share_over_time(rollout: Rollout, at: datetime, share: Fraction) -> None:
    assert rollout.share(at) == share


@pytest.mark.parametrize(("wariness", "at", "reached"), [
    (Fraction(0), START - timedelta(seconds=1), False),  # nobody before the start
    (Fraction(0), START, True),  # 0 < 10
    (Fraction(1, 10), START, False),  # 10 < 10 is false: the share must pass the place
    (Fraction(1, 10), START + timedelta(microseconds=1), True),
    (Fraction(37, 100), START + timedelta(hours=27), False),
    (Fraction(37, 100), START + timedelta(hours=27, microseconds=1), True),
    (Fraction(2**64 - 1, 2**64), START + timedelta(hours=89, minutes=59), False),
    (Fraction(2**64 - 1, 2**64), START + timedelta(hours=90), True),  # 100 %: every device
])
def test_who_is_reached_when(wariness: Fraction, at: datetime, reached: bool) -> None:
    assert RAMP.reaches(wariness, at) is reached


def test_zero_percent_reaches_no_device_and_a_hold_never_ends() -> None:
    zero = Rollout(START, 0, None)
    assert not zero.reaches(Fraction(0), START + timedelta(days=365))
    assert zero.offered_at(Fraction(0)) is None
    assert Rollout(START, 0, timedelta(hours=1)).offered_at(Fraction(0)) == \
        START + timedelta(microseconds=1)


def test_an_offer_past_the_last_representable_time_is_never() -> None:
    late = Rollout(datetime(9999, 12, 1, tzinfo=UTC), 0, timedelta(days=366))
    assert late.offered_at(Fraction(99, 100)) is None
    assert not late.reaches(Fraction(99, 100), datetime.max.replace(tzinfo=UTC))


def test_the_offer_time_of_the_example() -> None:
    assert RAMP.offered_at(Fraction(37, 100)) == START + timedelta(hours=27, microseconds=1)
    assert RAMP.offered_at(Fraction(5, 100)) == START  # below the start percentage
    assert Rollout(START + timedelta(days=1), 50, None).offered_at(Fraction(1, 4)) == \
        START + timedelta(days=1)


ROLLOUTS = st.builds(Rollout, st.just(START), st.integers(0, 100), st.one_of(
    st.none(), st.timedeltas(timedelta(seconds=1), timedelta(days=366))))
WARINESS = st.integers(0, 2**64 - 1).map(lambda n: Fraction(n, 2**64))
OFFSETS = st.timedeltas(timedelta(days=-30), timedelta(days=400))


@settings(max_examples=400, deadline=None, database=None)
@given(rollout=ROLLOUTS, wariness=WARINESS, a=OFFSETS, b=OFFSETS)
def test_the_share_grows_and_a_reached_device_stays_reached(
    rollout: Rollout, wariness: Fraction, a: timedelta, b: timedelta,
) -> None:
    early, late = sorted((START + a, START + b))
    assert 0 <= rollout.share(early) <= rollout.share(late) <= 100
    if rollout.reaches(wariness, early):
        assert rollout.reaches(wariness, late)


@settings(max_examples=400, deadline=None, database=None)
@given(rollout=ROLLOUTS, wariness=WARINESS)
def test_the_offer_time_is_the_first_moment_reached(rollout: Rollout,
                                                    wariness: Fraction) -> None:
    offered = rollout.offered_at(wariness)
    if offered is None:
        assert not rollout.reaches(wariness, START + timedelta(days=10_000))
        return
    assert rollout.reaches(wariness, offered)
    assert not rollout.reaches(wariness, offered - timedelta(microseconds=1))


@settings(max_examples=200, deadline=None, database=None)
@given(ident=st.text(min_size=1, max_size=64))
def test_the_wariness_is_stable_and_in_zero_to_one(ident: str) -> None:
    assert wariness_of(ident) == wariness_of(ident)
    assert 0 <= wariness_of(ident) < 1


def test_the_wariness_of_known_ids_and_of_none() -> None:
    # Pinned: a change to the derivation would reshuffle every fleet's rollout order.
    assert float(wariness_of("sim-0001")) == pytest.approx(
        int.from_bytes(__import__("hashlib").sha256(
            b"kruxos-rollout-wariness\0sim-0001").digest()[:8], "big") / 2**64)
    assert wariness_of("a") != wariness_of("b")
    assert wariness_of(None) == wariness_of("") == Fraction(2**64 - 1, 2**64)


def test_the_rollout_id_is_the_device_id_else_the_machine_id(tmp_path: Path) -> None:
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    base: dict[str, Any] = {"source": tmp_path / "d.yaml", "slot_paths": {},
                            "bootloader": "grub", "boot_env": tmp_path / "env",
                            "trusted_keys": (), "revoked_keys": (), "data_dir": tmp_path,
                            "spec_path": tmp_path / "s.yaml", "reboot_command": ("true",),
                            "cmdline": tmp_path / "c", "boot_id": tmp_path / "b",
                            "trial_tries": 3, "resync": timedelta(minutes=5),
                            "port_map": None, "machine_id": machine}
    assert rollout_id(Device(**base)) == "0123456789abcdef0123456789abcdef"
    assert rollout_id(Device(**base, device_id="sim-7")) == "sim-7"
    assert rollout_id(Device(**{**base, "machine_id": tmp_path / "absent"})) is None


# ---- latest, the reasons, the wake ----------------------------------------------------------

def _meta(rollout: dict[str, Any]) -> ChannelMetadata:
    return _verify(_document(_signed(releases=[
        _release("1.0.0"), _release("1.0.1"),
        _release("1.2.0", requires=FEATURE, rollout=rollout)])))


ROLLING = {"start": "2030-05-10T12:00:00Z", "startPercentage": 10, "duration": "90h"}
PLACE = Fraction(62, 100)  # offered at 10 % + 52 h
OFFER = START + timedelta(hours=52, microseconds=1)


def test_a_release_not_yet_reached_is_not_latest_and_the_view_says_when() -> None:
    meta = _meta(ROLLING)
    view = view_of(meta, now=START + timedelta(hours=27), wariness=PLACE)
    assert view.latest == "1.0.1"
    assert view.held == {"1.2.0": "1.2.0 is being rolled out: this device is offered it at "
                                  "2030-05-12 16:01 UTC (its place 62 %)"}
    assert view.held_until == OFFER
    later = view_of(meta, now=OFFER, wariness=PLACE)
    assert later.latest == "1.2.0" and later.held == {} and later.held_until is None
    assert view_of(meta).latest == "1.2.0"  # the publisher's view: every rollout complete
    holds = held_back(meta, START, PLACE)
    assert [h.version for h in holds] == ["1.2.0"] and holds[0].share == 10


def test_a_paused_rollout_holds_without_a_time() -> None:
    view = view_of(_meta({"start": "2030-05-10T12:00:00Z", "startPercentage": 30}),
                   now=START + timedelta(days=9), wariness=PLACE)
    assert view.latest == "1.0.1" and view.held_until is None
    assert view.held["1.2.0"] == ("1.2.0 is being rolled out and held at 30 %: this device is "
                                  "not offered it until the rollout is re-signed (its place "
                                  "62 %)")


HELD = ChannelView(versions=frozenset({"1.0.0", "1.0.1", "1.2.0"}), latest="1.0.1",
                   held={"1.2.0": "1.2.0 is being rolled out: this device is offered it at "
                                  "2030-05-12 16:01 UTC (its place 62 %)"},
                   held_until=OFFER)


def test_an_up_to_date_device_says_when_it_is_offered_the_next_and_looks_again_then() -> None:
    action = decide(policy("latest"), observed(booted_version="1.0.1", channel=HELD), NOW)
    assert isinstance(action, Nothing) and action.until == OFFER
    assert action.reason == ("slot A (sda2) runs 1.0.1, the latest release on the channel; "
                             "1.2.0 is being rolled out: this device is offered it at "
                             "2030-05-12 16:01 UTC (its place 62 %)")


def test_latest_stages_what_is_offered_and_says_what_is_held_back() -> None:
    action = decide(policy("latest"), observed(channel=HELD), NOW)
    assert isinstance(action, Stage) and action.version == "1.0.1"
    assert action.reason.endswith("; 1.2.0 is being rolled out: this device is offered it at "
                                  "2030-05-12 16:01 UTC (its place 62 %)")


def test_a_wait_ends_no_later_than_the_offer() -> None:
    suspended = policy("latest", suspend=True)
    action = decide(suspended, observed(channel=HELD), NOW)
    assert isinstance(action, Wait) and action.until == OFFER


def test_an_exact_version_or_a_pin_is_not_held_back() -> None:
    exact = decide(policy("1.2.0"), observed(channel=HELD), NOW)
    assert isinstance(exact, Stage) and exact.version == "1.2.0"
    assert "rolled out" not in exact.reason
    pin = Override("1.2.0", spec_wanted="1.0.1")
    pinned = decide(policy("latest"), observed(channel=HELD, override=pin), NOW)
    assert isinstance(pinned, Stage) and pinned.version == "1.2.0"
    assert "rolled out" not in pinned.reason


def test_without_a_hold_nothing_changes() -> None:
    plain = ChannelView(versions=frozenset({"1.0.1"}), latest="1.0.1")
    action = decide(policy("latest"), observed(booted_version="1.0.1", channel=plain), NOW)
    assert isinstance(action, Nothing) and action.until is None


# ---- the publisher --------------------------------------------------------------------------

def _cli(*args: str) -> Any:
    result = CliRunner().invoke(release_group, list(args))
    return result


def test_release_add_and_rollout_edit_the_draft_and_sign_what_devices_read(
    tmp_path: Path,
) -> None:
    chan = str(tmp_path / "stable")
    _cli("keygen", "--dir", str(tmp_path))
    image = build_sim_image(tmp_path / "img", "1.2.0", size=5_000)
    bad = _cli("add", chan, str(image), "--version", "1.2.0", "--rollout-start",
               "2030-05-10T12:00:00Z", "--rollout-start-percentage", "120")
    assert bad.exit_code == 2 and "--rollout-start-percentage: expected an integer from 0 " \
        "to 100, got 120" in bad.output
    alone = _cli("add", chan, str(image), "--version", "1.2.0", "--rollout-duration", "2d")
    assert alone.exit_code == 2 and "give --rollout-start too" in alone.output
    added = _cli("add", chan, str(image), "--version", "1.2.0", "--rollout-start",
                 "2020-05-10T12:00:00Z", "--rollout-start-percentage", "10",
                 "--rollout-duration", "90h")
    assert added.exit_code == 0, added.output
    assert "rollout: from 10 % at 2020-05-10T12:00:00Z to 100 % in 3d18h (100 % now)" \
        in added.output
    assert "requires phased-rollout" in added.output
    draft = json.loads((tmp_path / "stable" / "draft.json").read_text())
    assert draft["releases"][0]["rollout"] == {"start": "2020-05-10T12:00:00Z",
                                               "startPercentage": 10, "duration": "3d18h"}
    assert draft["releases"][0]["requires"] == ["phased-rollout"]
    shown = _cli("rollout", chan, "1.2.0")
    assert shown.exit_code == 0 and "from 10 % at 2020-05-10T12:00:00Z" in shown.output

    paused = _cli("rollout", chan, "1.2.0", "--pause")
    assert paused.exit_code == 0, paused.output
    rollout = json.loads((tmp_path / "stable" / "draft.json").read_text())["releases"][0][
        "rollout"]
    assert "duration" not in rollout and rollout["startPercentage"] == 100  # long past its end
    assert "held at 100 %" in paused.output

    restarted = _cli("rollout", chan, "1.2.0", "--start", "now", "--percentage", "5",
                     "--duration", "2d")
    assert restarted.exit_code == 0, restarted.output
    paused = _cli("rollout", chan, "1.2.0", "--pause")
    rollout = json.loads((tmp_path / "stable" / "draft.json").read_text())["releases"][0][
        "rollout"]
    assert rollout["startPercentage"] in (5, 6) and "duration" not in rollout  # rounded up
    resumed = _cli("rollout", chan, "1.2.0", "--duration", "1d")
    assert resumed.exit_code == 0, resumed.output
    rollout = json.loads((tmp_path / "stable" / "draft.json").read_text())["releases"][0][
        "rollout"]
    assert rollout["duration"] == "1d" and rollout["startPercentage"] in (5, 6)

    signed = _cli("sign", chan, "--key", str(tmp_path / "release.key"))
    assert signed.exit_code == 0, signed.output
    doc = json.loads((tmp_path / "stable" / "metadata.json").read_text())
    assert doc["signed"]["format"] == 2
    parsed = parse_rollout(doc["signed"]["releases"][0]["rollout"], "rollout",
                           ("phased-rollout",))
    assert parsed is not None and parsed.duration == timedelta(days=1)

    done = _cli("rollout", chan, "1.2.0", "--complete")
    assert done.exit_code == 0 and "every device is offered it at once" in done.output
    release = json.loads((tmp_path / "stable" / "draft.json").read_text())["releases"][0]
    assert "rollout" not in release and "requires" not in release
    both = _cli("rollout", chan, "1.2.0", "--pause", "--complete")
    assert both.exit_code == 2
    missing = _cli("rollout", chan, "9.9.9", "--pause")
    assert missing.exit_code == 1 and "9.9.9 is not in the channel" in missing.output


def test_signing_refuses_a_hand_edited_bad_rollout(tmp_path: Path) -> None:
    chan = tmp_path / "stable"
    _cli("keygen", "--dir", str(tmp_path))
    image = build_sim_image(tmp_path / "img", "1.2.0", size=5_000)
    assert _cli("add", str(chan), str(image), "--version", "1.2.0").exit_code == 0
    draft = json.loads((chan / "draft.json").read_text())
    draft["releases"][0]["rollout"] = {"start": "2030-05-10T12:00:00Z"}  # no requires
    (chan / "draft.json").write_text(json.dumps(draft))
    signed = _cli("sign", str(chan), "--key", str(tmp_path / "release.key"))
    assert signed.exit_code == 1
    assert "releases[0].rollout: a release with a rollout must require 'phased-rollout'" \
        in signed.output
    assert not (chan / "metadata.json").exists()
