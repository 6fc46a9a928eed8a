"""The channel format: a format number and per-release ``requires`` an old device cannot misread.

Parsing and refusal on hostile or newer documents, which releases ``latest``
and a pin resolve to, how the publisher writes both fields under the
signature, and what a device records (once) about releases it cannot install.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from reconciler.actions import Blocked, Nothing, Stage, Wait
from reconciler.channelwatch import ChannelWatch, view_of
from reconciler.cli.release import release_group
from reconciler.config import load_device
from reconciler.decide import decide
from reconciler.errors import ReleaseError
from reconciler.inspect import inspect_device
from reconciler.observed import ChannelView, ObservedState, Override
from reconciler.release import features
from reconciler.release.channel import add_release, init_channel, sign_channel
from reconciler.release.keys import keyid_of, load_signing_key
from reconciler.release.metadata import (
    MAX_FEATURE_LENGTH,
    MAX_REQUIRES,
    NEWEST_FORMAT,
    ChannelMetadata,
    canonical_json,
    verify_metadata,
)
from reconciler.sim.device import CHANNEL_PORT, init_device
from reconciler.sim.image import build_sim_image
from reconciler.spec import UpdatePolicy
from reconciler.store import StateStore
from tests.httpserver import ChannelServer
from tests.test_channel_pin import PinnedDevice
from tests.test_decide import POLICIES, any_observed, observed, policy

KEY = SigningKey(bytes(range(32)))
KEYID = keyid_of(KEY.verify_key)
NOW = datetime(2030, 5, 10, tzinfo=UTC)
BLOCK = 1024
SERVICE = "requires delta-images, which this device does not implement"


def _release(version: str = "1.0.0", **changes: Any) -> dict[str, Any]:
    release = {"version": version, "date": "2030-05-01", "changes": ["first"],
               "image": f"kruxos-{version}.img", "size": 2 * BLOCK, "sha256": "a" * 64,
               "block_size": BLOCK, "blocks": ["b" * 64, "c" * 64]}
    release.update(changes)
    return release


def _signed(**changes: Any) -> dict[str, Any]:
    signed = {"format": 2, "channel": "stable", "serial": 5, "issued": "2030-05-01T12:00:00Z",
              "expires": "2030-05-31T12:00:00Z", "releases": [_release()]}
    signed.update(changes)
    return signed


def _document(signed: dict[str, Any], key: SigningKey = KEY) -> bytes:
    sig = base64.b64encode(key.sign(canonical_json(signed)).signature).decode()
    return json.dumps({"signed": signed, "signatures": [
        {"keyid": keyid_of(key.verify_key), "sig": sig}]}).encode()


def _verify(raw: bytes) -> ChannelMetadata:
    return verify_metadata(raw, {KEYID: KEY.verify_key}, frozenset(), NOW, None, None)


def _refusal(raw: bytes) -> str:
    with pytest.raises(ReleaseError) as caught:
        _verify(raw)
    return str(caught.value)


# ---- the format number ----------------------------------------------------------------------

def test_metadata_without_a_format_is_format_1_and_still_read() -> None:
    signed = _signed()
    del signed["format"]
    assert _verify(_document(signed)).format == 1
    assert _verify(_document(_signed(format=1))).format == 1


def test_format_2_is_the_newest_this_device_reads() -> None:
    assert NEWEST_FORMAT == 2
    assert _verify(_document(_signed(format=2))).format == 2


@pytest.mark.parametrize("fmt", [3, 99, 2**62])
def test_a_format_newer_than_the_device_reads_is_refused_naming_both(fmt: int) -> None:
    message = _refusal(_document(_signed(format=fmt)))
    assert message == (f"channel metadata: format {fmt} is newer than this device reads (the "
                       "newest it reads is format 2); the device needs a newer KruxOS first")


def test_a_huge_format_number_is_quoted_short() -> None:
    assert _refusal(_document(_signed(format=10**100))).startswith(
        "channel metadata: format a number of 101 digits is newer than this device reads")


def test_a_newer_format_is_refused_before_its_other_fields_are_read() -> None:
    # A format-3 document may mean anything by its fields: they are not judged by format 2.
    message = _refusal(_document(_signed(format=3, serial="seven", releases={"new": "shape"})))
    assert "format 3 is newer" in message and "serial" not in message


@pytest.mark.parametrize("fmt, shown", [
    (0, "0"), (-1, "-1"), ("2", "'2'"), (2.0, "2.0"), (True, "true"), (None, "null"),
    ([2], "a list of 1 items"),
])
def test_a_format_that_is_not_a_format_number_is_refused(fmt: Any, shown: str) -> None:
    message = _refusal(_document(_signed(format=fmt)))
    assert message == (f"channel metadata: format {shown} is not supported (this device reads "
                       "formats 1 to 2)")


# ---- requires -------------------------------------------------------------------------------

def test_requires_is_read_per_release_and_absent_means_nothing_required() -> None:
    meta = _verify(_document(_signed(releases=[
        _release("1.0.0"), _release("1.1.0", requires=["delta-images", "block-index-64k"]),
        _release("1.2.0", requires=[])])))
    assert [r.requires for r in meta.releases] == [
        (), ("delta-images", "block-index-64k"), ()]


@pytest.mark.parametrize("requires, reason", [
    ("delta-images", "requires: expected a list of feature names, got 'delta-images"),
    ({"delta-images": True}, "expected a list of feature names, got an object of 1 fields"),
    (None, "expected a list of feature names, got null"),
    ([1], "requires: 1 is not a feature name"),
    ([["a"]], "requires: a list of 1 items is not a feature name"),
    ([""], "requires: '' is not a feature name"),
    (["Service-Artifacts"], "'Service-Artifacts' is not a feature name"),
    (["service artifacts"], "'service artifacts' is not a feature name"),
    (["-x"], "'-x' is not a feature name"),
    (["x-"], "'x-' is not a feature name"),
    (["x\x1b[2J"], "'x\\x1b[2J' is not a feature name"),
    (["x" * (MAX_FEATURE_LENGTH + 1)], f"at most {MAX_FEATURE_LENGTH} characters"),
    (["x" * 100_000], "is not a feature name"),
    ([f"f{i}" for i in range(MAX_REQUIRES + 1)], f"33 features, more than the {MAX_REQUIRES}"),
    (["a"] * 100_000, "100000 features, more than the 32 accepted"),
    (["a", "a"], "requires: a feature is listed twice"),
])
def test_requires_that_is_not_a_short_list_of_names_refuses_the_document(
    requires: Any, reason: str,
) -> None:
    message = _refusal(_document(_signed(releases=[_release(requires=requires)])))
    assert "releases[0].requires" in message and reason in message and len(message) < 300


def test_requires_at_its_limits_is_read() -> None:
    names = [f"feature-{i}-" + "x" * (MAX_FEATURE_LENGTH - 11) for i in range(MAX_REQUIRES)]
    assert all(len(n) <= MAX_FEATURE_LENGTH for n in names)
    meta = _verify(_document(_signed(releases=[_release(requires=names)])))
    assert meta.releases[0].requires == tuple(names)


def test_the_signature_covers_requires_and_the_format() -> None:
    doc = json.loads(_document(_signed(releases=[_release(requires=["delta-images"])])))
    doc["signed"]["releases"][0]["requires"] = []  # stripped on the way: a replayed signature
    assert "bad signature" in _refusal(json.dumps(doc).encode())
    doc = json.loads(_document(_signed(format=2)))
    doc["signed"]["format"] = 1
    assert "bad signature" in _refusal(json.dumps(doc).encode())


def test_unknown_fields_that_change_nothing_a_device_must_do_are_ignored() -> None:
    meta = _verify(_document(_signed(notes="see the site", releases=[
        _release(url="https://example.com/1.0.0", build={"id": 7})])))
    assert [r.version for r in meta.releases] == ["1.0.0"]


def test_a_release_requiring_an_unknown_feature_is_not_installable_a_known_one_is() -> None:
    meta = _verify(_document(_signed(releases=[
        _release("1.0.0"), _release("1.1.0", requires=["delta-images", "block-index-64k"]),
        _release("1.2.0", requires=["delta-images"])])))
    assert features.FEATURES == frozenset({"service-artifacts", "service-data",
                                           "container-image", "phased-rollout"})
    newer = meta.find("1.1.0")
    assert newer is not None
    assert features.why_not(newer) == ("requires delta-images, block-index-64k, which "
                                       "this device does not implement")
    implemented = frozenset({"delta-images"})
    assert features.missing(newer, implemented) == ("block-index-64k",)
    everything = frozenset({"delta-images", "block-index-64k"})
    assert features.why_not(newer, everything) is None
    newest = features.newest_installable(meta)
    assert newest is not None and newest.version == "1.0.0"
    assert [(r.version, why) for r, why in features.skipped(meta)] == [
        ("1.2.0", "requires delta-images, which this device does not implement"),
        ("1.1.0", "requires delta-images, block-index-64k, which this device does not "
                  "implement")]
    best = features.newest_installable(meta, everything)
    assert best is not None and best.version == "1.2.0"
    assert features.skipped(meta, everything) == []


def test_the_view_lists_unsupported_releases_and_latest_is_the_newest_installable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    meta = _verify(_document(_signed(releases=[
        _release("1.0.0"), _release("1.10.0", requires=["delta-images"]),
        _release("1.9.0", requires=["delta-images"]), _release("0.9.0", requires=["x"])])))
    view = view_of(meta)
    assert view.versions == {"1.0.0", "1.10.0", "1.9.0", "0.9.0"}
    assert view.latest == "1.0.0"
    assert list(view.refused) == ["1.10.0", "1.9.0", "0.9.0"]  # newest first
    assert view.refused["1.10.0"] == SERVICE
    monkeypatch.setattr(features, "FEATURES", frozenset({"delta-images"}))
    implemented = view_of(meta)  # a later build that implements the feature
    assert implemented.latest == "1.10.0" and "1.10.0" not in implemented.refused


# ---- resolution: latest skips, a pin refuses ------------------------------------------------

SKIPPING = ChannelView(versions=frozenset({"1.0.0", "1.0.1", "1.1.0"}), latest="1.0.1",
                       refused={"1.1.0": SERVICE})


def test_latest_stages_the_newest_installable_release_and_says_which_it_skipped() -> None:
    action = decide(policy("latest"), observed(channel=SKIPPING), NOW)
    assert isinstance(action, Stage) and action.version == "1.0.1"
    assert action.reason.endswith(f"; skipped 1.1.0 ({SERVICE})")


def test_a_device_on_the_newest_installable_release_stays_and_says_why() -> None:
    action = decide(policy("latest"), observed(booted_version="1.0.1", channel=SKIPPING), NOW)
    assert isinstance(action, Nothing)
    assert action.reason == ("slot A (sda2) runs 1.0.1, the latest release on the channel; "
                             f"skipped 1.1.0 ({SERVICE})")


def test_latest_with_nothing_installable_waits_and_names_what_it_skipped() -> None:
    only = ChannelView(versions=frozenset({"1.1.0", "1.2.0"}), latest=None,
                       refused={"1.2.0": SERVICE, "1.1.0": SERVICE})
    action = decide(policy("latest"), observed(channel=only), NOW)
    assert isinstance(action, Wait)
    assert action.reason == ("cannot resolve 'latest': channel lists no release this device "
                             f"can install; skipped 1.2.0 ({SERVICE}), 1.1.0 ({SERVICE})")


def test_many_skipped_releases_are_counted_after_the_first_three() -> None:
    refused = {f"2.0.{i}": SERVICE for i in range(9, -1, -1)}
    view = ChannelView(versions=frozenset({"1.0.1", *refused}), latest="1.0.1", refused=refused)
    action = decide(policy("latest"), observed(channel=view), NOW)
    assert action.reason.endswith(f"2.0.7 ({SERVICE}) and 7 more")
    assert len(action.reason) < 400


def test_an_older_unsupported_release_is_not_a_skip() -> None:
    view = ChannelView(versions=frozenset({"0.9.0", "1.0.1"}), latest="1.0.1",
                       refused={"0.9.0": SERVICE})
    action = decide(policy("latest"), observed(channel=view), NOW)
    assert isinstance(action, Stage) and "skipped" not in action.reason


def test_a_spec_pinning_an_unsupported_release_is_refused_with_the_reason() -> None:
    action = decide(policy("1.1.0"), observed(channel=SKIPPING), NOW)
    assert action == Blocked("1.1.0 cannot be installed on this device: it requires "
                             "delta-images, which this device does not implement "
                             "(spec wants 1.1.0)")


def test_a_person_pinning_an_unsupported_release_is_refused_with_the_reason() -> None:
    action = decide(policy("latest"), observed(channel=SKIPPING,
                                               override=Override("1.1.0", spec_wanted="1.0.1")),
                    NOW)
    assert isinstance(action, Blocked)
    assert action.reason.startswith(f"1.1.0 cannot be installed on this device: it {SERVICE}")
    assert "skipped" not in action.reason  # a pin is not latest: nothing was skipped


def test_a_device_already_running_a_release_it_could_not_install_is_left_alone() -> None:
    action = decide(policy("1.1.0"), observed(booted_version="1.1.0", channel=SKIPPING), NOW)
    assert isinstance(action, Nothing)


REFUSING = [
    SKIPPING,
    ChannelView(versions=frozenset({"1.0.0", "1.0.1", "1.0.2", "2024.1"}), latest="1.0.1",
                refused={"2024.1": SERVICE, "1.0.2": SERVICE}),
    ChannelView(versions=frozenset({"1.0.1", "1.0.2"}), refused={"1.0.2": SERVICE,
                                                                 "1.0.1": SERVICE}),
    ChannelView(versions=frozenset({"1.0.2"}), latest="1.0.2", refused={"0.9.0": SERVICE},
                error="channel: stale"),
]


@settings(max_examples=300, deadline=None, database=None)
@given(obs=any_observed(), spec=st.sampled_from(POLICIES), view=st.sampled_from(REFUSING))
def test_no_observed_state_stages_a_release_the_device_cannot_install(
    obs: ObservedState, spec: UpdatePolicy | None, view: ChannelView,
) -> None:
    action = decide(spec, replace(obs, channel=view), NOW)
    assert action.reason
    if isinstance(action, Stage):
        assert action.version not in view.refused, action


# ---- the publisher --------------------------------------------------------------------------

@pytest.fixture()
def channel(tmp_path: Path) -> Path:
    init_channel(tmp_path / "channel", "stable")
    return tmp_path / "channel"


def _add(channel: Path, version: str, *requires: str) -> None:
    image = build_sim_image(channel.parent / f"{version}.img", version, size=8 * BLOCK)
    add_release(channel, image, version, [f"release {version}"], block_size=BLOCK,
                requires=requires)


def _publish_signed(channel: Path, tmp_path: Path) -> dict[str, Any]:
    key = tmp_path / "k.key"
    if not key.exists():
        CliRunner().invoke(release_group, ["keygen", "--dir", str(tmp_path), "--name", "k"])
    doc: dict[str, Any] = sign_channel(channel, [key])
    return doc


def test_a_channel_without_requirements_is_signed_as_format_1_for_older_devices(
    channel: Path, tmp_path: Path,
) -> None:
    _add(channel, "1.0.0")
    signed = _publish_signed(channel, tmp_path)["signed"]
    assert signed["format"] == 1 and "requires" not in signed["releases"][0]


def test_a_release_with_requires_makes_the_signed_metadata_format_2(
    channel: Path, tmp_path: Path,
) -> None:
    _add(channel, "1.0.0")
    _add(channel, "1.1.0", "delta-images")
    signed = _publish_signed(channel, tmp_path)["signed"]
    assert signed["format"] == 2
    assert [r.get("requires") for r in signed["releases"]] == [None, ["delta-images"]]
    raw = (channel / "metadata.json").read_bytes()
    pub = load_signing_key(tmp_path / "k.key").verify_key
    meta = verify_metadata(raw, {keyid_of(pub): pub}, frozenset(), datetime.now(UTC), None, None)
    assert meta.format == 2 and meta.releases[1].requires == ("delta-images",)


@pytest.mark.parametrize("requires, reason", [
    (("Service",), "--requires: 'Service' is not a feature name"),
    (("a", "a"), "--requires: a feature is listed twice"),
    (tuple(f"f{i}" for i in range(40)), "--requires: 40 features, more than the 32 accepted"),
])
def test_the_publisher_refuses_requires_a_device_would_refuse(
    channel: Path, requires: tuple[str, ...], reason: str,
) -> None:
    with pytest.raises(ReleaseError) as caught:
        _add(channel, "1.0.0", *requires)
    assert str(caught.value).startswith(reason)
    assert json.loads((channel / "draft.json").read_text())["releases"] == []


def test_signing_refuses_a_release_field_this_version_does_not_know(
    channel: Path, tmp_path: Path,
) -> None:
    _add(channel, "1.0.0")
    draft = json.loads((channel / "draft.json").read_text())
    draft["releases"][0]["deltas"] = {"from": "0.9.0"}  # a device would ignore it: refused
    (channel / "draft.json").write_text(json.dumps(draft))
    with pytest.raises(ReleaseError, match=r"releases\[0\] has field\(s\) 'deltas' this "
                                           r"version of kruxos does not know"):
        _publish_signed(channel, tmp_path)
    assert not (channel / "metadata.json").exists()


def test_signing_refuses_a_hand_edited_bad_requires(channel: Path, tmp_path: Path) -> None:
    _add(channel, "1.0.0")
    draft = json.loads((channel / "draft.json").read_text())
    draft["releases"][0]["requires"] = "delta-images"
    (channel / "draft.json").write_text(json.dumps(draft))
    with pytest.raises(ReleaseError, match=r"draft.json: releases\[0\].requires: expected a "
                                           r"list of feature names"):
        _publish_signed(channel, tmp_path)


def test_cli_add_takes_requires_and_verify_shows_it(tmp_path: Path) -> None:
    run = CliRunner().invoke
    run(release_group, ["keygen", "--dir", str(tmp_path)])
    chan = str(tmp_path / "stable")
    image = build_sim_image(tmp_path / "img", "1.2.3", size=50_000)
    added = run(release_group, ["add", chan, str(image), "--version", "1.2.3",
                                "--requires", "delta-images", "--requires", "block-index-64k"])
    assert added.exit_code == 0, added.output
    assert "requires delta-images, block-index-64k: devices that do not implement it skip" \
        in added.output
    assert "note: this kruxos does not implement delta-images, block-index-64k" \
        in added.output
    run(release_group, ["sign", chan, "--key", str(tmp_path / "release.key")])
    verified = run(release_group, ["verify", chan, "--key", str(tmp_path / "release.pub")])
    assert verified.exit_code == 0, verified.output
    assert "format 2" in verified.output
    assert "1.2.3 (latest): kruxos-1.2.3.img, 50000 bytes" in verified.output
    assert "requires delta-images, block-index-64k" in verified.output
    bad = run(release_group, ["add", chan, str(image), "--version", "1.2.3", "--requires", "X!"])
    assert bad.exit_code == 1 and "--requires: 'X!' is not a feature name" in bad.output


# ---- a device: recorded once, refused for staging, visible in status ------------------------

@pytest.fixture
def dev(tmp_path: Path) -> Iterator[PinnedDevice]:
    root = tmp_path / "dev"
    init_device(root)
    (root / "run" / "cmdline").write_text("root=/dev/sda2 kruxos.slot=A\n")
    (root / "run" / "boot_id").write_text("boot-1\n")
    server = ChannelServer(root / "channel")
    try:
        (root / "run" / "ports.json").write_text(
            json.dumps({CHANNEL_PORT: server.url.removeprefix("http://")}))
        yield PinnedDevice(root, server)
    finally:
        server.stop()


def _publish_on(dev: PinnedDevice, version: str, *requires: str) -> None:
    image = build_sim_image(dev.root / "run" / f"{version}.img", version, size=8 * BLOCK)
    add_release(dev.channel, image, version, [f"release {version}"], block_size=BLOCK,
                requires=requires)
    sign_channel(dev.channel, [dev.root / "keys" / "release.key"])


def _release_refusals(dev: PinnedDevice) -> list[Any]:
    return [r for r in dev.records() if r.action == "release-refused"]


def test_a_device_skips_an_unsupported_release_and_records_it_once(dev: PinnedDevice) -> None:
    _publish_on(dev, "1.1.0", "delta-images")
    dev.want("latest")
    dev.passes(1)
    stages = [r for r in dev.records() if r.kind == "decision" and r.action == "stage"]
    assert stages and stages[0].reason.startswith("Stage 1.0.1 into slot B (sda3)")
    assert stages[0].reason.endswith(f"; skipped 1.1.0 ({SERVICE})")
    dev.restart()
    dev.passes(2)
    sign_channel(dev.channel, [dev.root / "keys" / "release.key"])  # same releases, new serial
    dev.passes(2)
    refusals = _release_refusals(dev)
    assert [r.reason for r in refusals] == [f"releases this device cannot install: 1.1.0 "
                                            f"{SERVICE}"]
    assert refusals[0].details == {
        "releases": [{"version": "1.1.0", "requires": ["delta-images"],
                      "missing": ["delta-images"]}],
        "count": 1, "channel": "stable"}
    _publish_on(dev, "1.2.0", "delta-images")  # a new refused release: recorded again
    dev.passes(1)
    assert [r.reason for r in _release_refusals(dev)][1] == (
        "releases this device cannot install: 1.2.0 requires delta-images, which this "
        f"device does not implement; 1.1.0 {SERVICE}")
    assert len(_release_refusals(dev)) == 2
    assert dev.reconciler.audit.verify().ok


def test_a_pin_to_an_unsupported_release_is_blocked_and_never_staged(dev: PinnedDevice) -> None:
    _publish_on(dev, "1.1.0", "delta-images")
    dev.want("1.1.0")
    assert dev.passes(2) == ["blocked", "blocked"]
    blocked = [r for r in dev.records() if r.kind == "decision" and r.action == "blocked"]
    assert blocked[0].reason == (f"1.1.0 cannot be installed on this device: it {SERVICE} "
                                 "(spec wants 1.1.0)")
    device = load_device(dev.root / "device.yaml")
    watch = ChannelWatch(device, StateStore(device.data_dir), dev.clock, save_trust=False)
    with pytest.raises(ReleaseError, match=f"1.1.0 cannot be installed on this device: it "
                                           f"{SERVICE}"):
        watch.release(dev.reconciler.spec.policy, "1.1.0")  # type: ignore[union-attr]


def test_status_and_plan_show_the_skip_and_record_nothing(dev: PinnedDevice) -> None:
    _publish_on(dev, "1.1.0", "delta-images")
    dev.want("latest")
    view = inspect_device(load_device(dev.root / "device.yaml"), dev.now)
    assert view.observed.channel.refused == {"1.1.0": SERVICE}
    assert view.observed.channel.latest == "1.0.1"
    assert view.action is not None and view.action.reason.endswith(f"skipped 1.1.0 ({SERVICE})")
    assert _release_refusals(dev) == []


def test_a_device_that_implements_the_feature_takes_the_release(
    dev: PinnedDevice, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(features, "FEATURES", frozenset({"delta-images"}))
    _publish_on(dev, "1.1.0", "delta-images")
    dev.want("latest")
    dev.passes(1)
    stages = [r for r in dev.records() if r.kind == "decision" and r.action == "stage"]
    assert stages and stages[0].reason.startswith("Stage 1.1.0 into slot B (sda3)")
    assert _release_refusals(dev) == []


def test_metadata_in_a_newer_format_is_refused_and_recorded_once(dev: PinnedDevice) -> None:
    key = load_signing_key(dev.root / "keys" / "release.key")
    signed = json.loads((dev.channel / "metadata.json").read_text())["signed"]
    signed.update(format=3, serial=signed["serial"] + 1)
    (dev.channel / "metadata.json").write_bytes(_document(signed, key))
    dev.want("latest")
    assert "stage" not in dev.passes(3)
    refusals = [r for r in dev.records() if r.action == "channel-refused"]
    assert [r.reason for r in refusals] == [
        "channel metadata: format 3 is newer than this device reads (the newest it reads is "
        "format 2); the device needs a newer KruxOS first"]
    waits = [r for r in dev.records() if r.kind == "decision" and r.action == "wait"]
    assert waits[-1].reason.startswith("cannot resolve 'latest': channel refused: channel "
                                       "metadata: format 3 is newer")
    assert dev.reboots == []


# ---- a container-only release: no root image ------------------------------------------------

IMAGE_REF = "registry.example.com/altvale/kruxos@sha256:" + "d" * 64
NO_ROOT = ("has no root image (a container-only release), which a device with slots cannot "
           "install")


def _container_only(version: str = "1.1.0", **changes: Any) -> dict[str, Any]:
    release = {"version": version, "date": "2030-05-01", "changes": ["container only"],
               "requires": ["container-image"], "container_image": IMAGE_REF}
    release.update(changes)
    return release


def test_a_container_only_release_is_read_and_signed_without_root_image_fields() -> None:
    meta = _verify(_document(_signed(releases=[_release("1.0.0"), _container_only()])))
    rel = meta.find("1.1.0")
    assert rel is not None and not rel.has_root_image
    assert (rel.container_image, rel.size, rel.blocks, rel.components()) == \
        (IMAGE_REF, 0, (), None)
    assert rel.to_json() == _container_only()  # no root image field is written back
    found = meta.find("1.0.0")
    assert found is not None and found.has_root_image and found.components() is not None


@pytest.mark.parametrize("release, reason", [
    (_container_only(container_image=None, requires=[]),
     "releases[1].image: expected a string, got nothing (only a release with a "
     "container_image may have no root image)"),
    (_container_only(size=4096), "releases[1].image: missing, but size given"),
    (_container_only(sha256="a" * 64, blocks=[]),
     "releases[1].image: missing, but sha256, blocks given"),
    (_container_only(requires=["container-image", "service-artifacts"], services=[
        {"name": "gateway", "version": "1.0.0", "file": "gateway-1.0.0.svc", "size": 1,
         "sha256": "a" * 64, "block_size": 1, "blocks": ["a" * 64]}]),
     "releases[1].services: a container-only release carries no service artifact"),
    (_container_only(requires=[]),
     "releases[1].container_image: a release with a container image must require "
     "'container-image'"),
])
def test_a_release_without_a_root_image_must_be_exactly_a_container_only_one(
    release: dict[str, Any], reason: str,
) -> None:
    refused = _refusal(_document(_signed(releases=[_release("1.0.0"), {
        k: v for k, v in release.items() if v is not None}])))
    assert reason in refused, refused


def test_a_slot_device_refuses_a_container_only_release_and_a_container_device_takes_it(
) -> None:
    meta = _verify(_document(_signed(releases=[
        _release("1.0.0"), _container_only("1.1.0"),
        _release("1.0.5", requires=["container-image"], container_image=IMAGE_REF)])))
    slots = view_of(meta, runtime="slots")
    assert slots.latest == "1.0.5" and slots.refused == {"1.1.0": NO_ROOT}
    assert "1.1.0" not in slots.components  # nothing to compare a root image with
    docker = view_of(meta, runtime="docker")
    assert docker.latest == "1.1.0" and docker.images["1.1.0"] == IMAGE_REF
    assert docker.refused == {"1.0.0": "has no container image, which a device with "
                                       "runtime: docker needs"}
    assert view_of(meta).latest == "1.1.0"  # the publisher's view judges only features
    pinned = decide(policy("1.1.0"), observed(channel=slots), NOW)
    assert isinstance(pinned, Blocked)
    assert pinned.reason == f"1.1.0 cannot be installed on this device: it {NO_ROOT} " \
                            "(spec wants 1.1.0)"


def test_the_publisher_adds_a_container_only_release_with_no_image_file(
    channel: Path, tmp_path: Path,
) -> None:
    _add(channel, "1.0.0")
    rel = add_release(channel, None, "1.1.0", ["container"], container_image=IMAGE_REF)
    assert not rel.has_root_image and rel.requires == ("container-image",)
    assert not (channel / "kruxos-1.1.0.img").exists()
    signed = _publish_signed(channel, tmp_path)["signed"]
    assert signed["format"] == 2 and signed["releases"][1] == {
        "version": "1.1.0", "date": rel.date, "changes": ["container"],
        "requires": ["container-image"], "container_image": IMAGE_REF}
    pub = load_signing_key(tmp_path / "k.key").verify_key
    meta = verify_metadata((channel / "metadata.json").read_bytes(), {keyid_of(pub): pub},
                           frozenset(), datetime.now(UTC), None, None)
    assert meta.find("1.1.0") == rel
    with pytest.raises(ReleaseError, match="no root image: name the release's IMAGE file, or "
                                           "its --container-image"):
        add_release(channel, None, "1.2.0", ["x"])
    assert [r["version"] for r in json.loads((channel / "draft.json").read_text())[
        "releases"]] == ["1.0.0", "1.1.0"]


def test_signing_refuses_a_hand_edited_release_without_its_root_image(
    channel: Path, tmp_path: Path,
) -> None:
    _add(channel, "1.0.0")
    draft = json.loads((channel / "draft.json").read_text())
    del draft["releases"][0]["image"]
    (channel / "draft.json").write_text(json.dumps(draft))
    with pytest.raises(ReleaseError, match=r"draft.json: releases\[0\].image: missing, but "
                                           r"size, sha256, block_size, blocks given"):
        _publish_signed(channel, tmp_path)
    assert not (channel / "metadata.json").exists()


def test_cli_add_without_an_image_lists_a_container_only_release(tmp_path: Path) -> None:
    run = CliRunner().invoke
    run(release_group, ["keygen", "--dir", str(tmp_path)])
    chan = str(tmp_path / "stable")
    added = run(release_group, ["add", chan, "--version", "1.1.0", "--changes", "c",
                                "--container-image", IMAGE_REF])
    assert added.exit_code == 0, added.output
    assert added.output.splitlines()[0] == (f"added 1.1.0: container image {IMAGE_REF} (no "
                                            "root image: devices with slots cannot install it)")
    assert "requires container-image" in added.output
    assert run(release_group, ["sign", chan, "--key", str(tmp_path / "release.key")]
               ).exit_code == 0
    verified = run(release_group, ["verify", chan, "--key", str(tmp_path / "release.pub")])
    assert verified.exit_code == 0, verified.output
    assert f"1.1.0 (latest): container image {IMAGE_REF} (no root image)" in verified.output
    neither = run(release_group, ["add", chan, "--version", "1.2.0"])
    assert neither.exit_code == 1 and "no root image: name the release's IMAGE file" \
        in neither.output
    image = build_sim_image(tmp_path / "svc", "1.2.0", size=4096)
    services = run(release_group, ["add", chan, "--version", "1.2.0", "--container-image",
                                   IMAGE_REF, "--service", f"gateway={image}"])
    assert services.exit_code == 1 and "a container-only release (no root image) carries no " \
        "service artifact" in services.output


def test_a_slot_device_pinned_to_a_container_only_release_blocks_and_records_why(
    dev: PinnedDevice,
) -> None:
    add_release(dev.channel, None, "1.1.0", ["container"], container_image=IMAGE_REF)
    sign_channel(dev.channel, [dev.root / "keys" / "release.key"])
    dev.want("1.1.0")
    assert dev.passes(2) == ["blocked", "blocked"]
    blocked = [r for r in dev.records() if r.kind == "decision" and r.action == "blocked"]
    assert blocked[0].reason == (f"1.1.0 cannot be installed on this device: it {NO_ROOT} "
                                 "(spec wants 1.1.0)")
    assert [r.reason for r in _release_refusals(dev)] == [
        f"releases this device cannot install: 1.1.0 {NO_ROOT}"]
    device = load_device(dev.root / "device.yaml")
    watch = ChannelWatch(device, StateStore(device.data_dir), dev.clock, save_trust=False)
    with pytest.raises(ReleaseError, match="1.1.0 cannot be installed on this device: it has "
                                           "no root image"):
        watch.release(dev.reconciler.spec.policy, "1.1.0")  # type: ignore[union-attr]
    dev.want("latest")  # latest passes over it and says so
    view = inspect_device(device, dev.now)
    assert view.observed.channel.latest == "1.0.1"
    assert view.action is not None and view.action.reason.endswith(f"skipped 1.1.0 ({NO_ROOT})")
