"""What a move between two releases needs, derived from their signed components (pure).

A decision table: each row is a booted release, a desired one, and the
update it needs; then the same answer reached from real signed metadata.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from reconciler.components import Components, ServicePart, UpdateNeed, update_needed
from reconciler.release.keys import keyid_of
from reconciler.release.metadata import canonical_json, verify_metadata

ROOT_1, ROOT_2 = "1" * 64, "2" * 64
GW_1 = ServicePart("1.0.1", "a" * 64, 100)
GW_2 = ServicePart("1.0.2", "b" * 64, 100)
DB = ServicePart("2.0.0", "c" * 64, 50)


def _release(version: str, root: str = ROOT_1, size: int = 4096,
             **services: ServicePart) -> Components:
    return Components(version, root, size, services)


# (row name, booted, desired, kind, changed, added, removed)
TABLE: list[tuple[str, Components | None, Components, str, tuple[str, ...],
                  tuple[str, ...], tuple[str, ...]]] = [
    ("same root, a service of other content",
     _release("1.0.1", gateway=GW_1, db=DB), _release("1.0.2", gateway=GW_2, db=DB),
     "services", ("gateway",), (), ()),
    ("same root, a service only relabelled with another version",
     _release("1.0.1", gateway=GW_1), _release("1.0.2", gateway=ServicePart("1.0.9", "a" * 64,
                                                                            100)),
     "services", ("gateway",), (), ()),
    ("same root, a service added",
     _release("1.0.1", gateway=GW_1), _release("1.0.2", gateway=GW_1, db=DB),
     "services", (), ("db",), ()),
    ("same root, a service removed",
     _release("1.0.1", gateway=GW_1, db=DB), _release("1.0.2", gateway=GW_1),
     "services", (), (), ("db",)),
    ("same root, changed, added and removed at once",
     _release("1.0.1", gateway=GW_1, db=DB), _release("1.0.2", gateway=GW_2, metrics=DB),
     "services", ("gateway",), ("metrics",), ("db",)),
    ("same root, first services on a release that had none",
     _release("1.0.1"), _release("1.0.2", gateway=GW_1),
     "services", (), ("gateway",), ()),
    ("back to an older release of the same root (a service downgrade)",
     _release("1.0.2", gateway=GW_2), _release("1.0.1", gateway=GW_1),
     "services", ("gateway",), (), ()),
    ("different root, services ignored: the new image carries its own",
     _release("1.0.1", gateway=GW_1), _release("1.1.0", ROOT_2, gateway=GW_2, db=DB),
     "slot", (), (), ()),
    ("different root, identical services: still a slot update",
     _release("1.0.1", gateway=GW_1), _release("1.1.0", ROOT_2, gateway=GW_1),
     "slot", (), (), ()),
    ("same root hash, other size: another root image",
     _release("1.0.1", gateway=GW_1), _release("1.1.0", ROOT_1, 8192, gateway=GW_1),
     "slot", (), (), ()),
    ("the booted release unknown to the channel: a slot update, the safe answer",
     None, _release("1.0.2", gateway=GW_1), "slot", (), (), ()),
    ("the same components under another version: nothing",
     _release("1.0.1", gateway=GW_1), _release("1.0.2", gateway=GW_1), "none", (), (), ()),
    ("the booted release itself: nothing",
     _release("1.0.1", gateway=GW_1, db=DB), _release("1.0.1", gateway=GW_1, db=DB),
     "none", (), (), ()),
]


@pytest.mark.parametrize(("booted", "desired", "kind", "changed", "added", "removed"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_the_update_a_move_needs(booted: Components | None, desired: Components, kind: str,
                                 changed: tuple[str, ...], added: tuple[str, ...],
                                 removed: tuple[str, ...]) -> None:
    need = update_needed(booted, desired)
    assert (need.kind, need.changed, need.added, need.removed) == (kind, changed, added,
                                                                   removed), need.reason
    assert need.services == tuple(sorted((*changed, *added, *removed)))


def test_each_answer_says_why_in_a_sentence_a_person_reads() -> None:
    assert update_needed(_release("1.0.1", gateway=GW_1, db=DB),
                         _release("1.0.2", gateway=GW_2, metrics=DB)).reason == (
        "1.0.2 has the root image of 1.0.1; services differ (gateway 1.0.1 → 1.0.2, metrics "
        "2.0.0 added, db removed): a service update, no reboot")
    assert update_needed(_release("1.0.1"), _release("1.1.0", ROOT_2)).reason == (
        "1.1.0 has another root image than 1.0.1: a slot update (the new image carries its "
        "own services)")
    assert update_needed(None, _release("1.1.0")).reason == (
        "the booted release is not on the channel: a slot update to 1.1.0 (what runs cannot "
        "be compared)")
    assert update_needed(_release("1.0.1"), _release("1.0.2")).reason == (
        "1.0.2 has the root image and services of 1.0.1: nothing to update")


PARTS = st.sampled_from([GW_1, GW_2, DB])
RELEASES = st.builds(_release, st.sampled_from(["1.0.1", "1.0.2"]),
                     st.sampled_from([ROOT_1, ROOT_2]),
                     st.sampled_from([4096, 8192])).flatmap(
    lambda r: st.dictionaries(st.sampled_from(["gateway", "db", "metrics"]), PARTS).map(
        lambda services: Components(r.version, r.root_sha256, r.root_size, services)))


@settings(max_examples=300, deadline=None, database=None)
@given(booted=RELEASES, desired=RELEASES)
def test_a_reboot_is_needed_exactly_when_the_root_image_differs(booted: Components,
                                                                desired: Components) -> None:
    need = update_needed(booted, desired)
    root_differs = (booted.root_sha256, booted.root_size) != (desired.root_sha256,
                                                              desired.root_size)
    assert (need.kind == "slot") == root_differs
    if need.kind == "services":
        touched = set(need.services)
        assert touched == {n for n in booted.services.keys() | desired.services.keys()
                           if booted.services.get(n) != desired.services.get(n)}
    assert need.kind != "none" or booted.services == desired.services
    back = update_needed(desired, booted)
    assert back.kind == need.kind and set(back.added) == set(need.removed)


def _signed_release(version: str, root: str, gateway_sha: str) -> dict[str, Any]:
    return {"version": version, "date": "2030-05-01", "changes": [], "image": f"{version}.img",
            "size": 1024, "sha256": root, "block_size": 1024, "blocks": ["b" * 64],
            "requires": ["service-artifacts"],
            "services": [{"name": "gateway", "version": version, "file": f"gw-{version}.svc",
                          "size": 10, "sha256": gateway_sha, "block_size": 1024,
                          "blocks": ["e" * 64]}]}


def test_the_answer_comes_from_the_signed_entries_the_device_verified() -> None:
    key = SigningKey(bytes(range(32)))
    signed = {"format": 2, "channel": "stable", "serial": 1, "issued": "2030-05-01T12:00:00Z",
              "expires": "2030-05-31T12:00:00Z", "releases": [
                  _signed_release("1.0.1", ROOT_1, "a" * 64),
                  _signed_release("1.0.2", ROOT_1, "b" * 64),
                  _signed_release("1.1.0", ROOT_2, "b" * 64)]}
    sig = base64.b64encode(key.sign(canonical_json(signed)).signature).decode()
    raw = json.dumps({"signed": signed, "signatures": [
        {"keyid": keyid_of(key.verify_key), "sig": sig}]}).encode()
    meta = verify_metadata(raw, {keyid_of(key.verify_key): key.verify_key}, frozenset(),
                           datetime(2030, 5, 10, tzinfo=UTC), None, None)
    booted, service, slot = (r.components() for r in meta.releases)
    assert booted is not None and service is not None and slot is not None  # root images
    assert update_needed(booted, service) == UpdateNeed(
        "services", "1.0.2 has the root image of 1.0.1; services differ (gateway 1.0.1 → "
                    "1.0.2): a service update, no reboot", ("gateway",))
    assert update_needed(service, slot).kind == "slot"
    assert update_needed(booted, booted).kind == "none"
