"""The semaphore's rules and the server's configuration, without etcd (pure functions)."""

from __future__ import annotations

import pytest

from reconciler.fleet.server import (
    ConfigInvalid,
    GroupRule,
    force_release,
    parse_config,
    pre_reboot,
    steady_state,
)


def test_a_new_group_grants_up_to_its_slots_and_a_holder_again() -> None:
    rule = GroupRule(2, None)
    sem, (granted, _, held) = pre_reboot(None, "g", "a", rule, 100.0)
    assert granted and held == 1 and sem["slots"] == 2
    sem, (granted, _, held) = pre_reboot(sem, "g", "b", rule, 101.0)
    assert granted and held == 2
    again, (granted, _, _) = pre_reboot(sem, "g", "a", rule, 102.0)
    assert granted and again == sem  # recursive: nothing to write
    refused, (granted, _, _) = pre_reboot(sem, "g", "c", rule, 103.0)
    assert not granted and refused == sem
    assert sem["holders"]["a"]["since"] == 100.0


def test_the_rule_of_this_replica_is_written_into_an_old_key() -> None:
    sem, _ = pre_reboot(None, "g", "a", GroupRule(1, None), 0.0)
    raised, (granted, _, _) = pre_reboot(sem, "g", "b", GroupRule(3, 60.0), 1.0)
    assert granted and raised["slots"] == 3 and raised["ttl"] == 60.0
    lowered, (granted, _, _) = pre_reboot(raised, "g", "c", GroupRule(1, None), 2.0)
    assert not granted and lowered["slots"] == 1 and set(lowered["holders"]) == {"a", "b"}
    assert lowered != raised  # the refusal still writes the new count


def test_a_holder_past_the_ttl_is_dropped_and_recorded() -> None:
    rule = GroupRule(1, 10.0)
    sem, _ = pre_reboot(None, "g", "a", rule, 0.0)
    _, (granted, expired, _) = pre_reboot(sem, "g", "b", rule, 10.0)
    assert not granted and expired == []  # exactly the TTL: still held
    after, (granted, expired, _) = pre_reboot(sem, "g", "b", rule, 10.5)
    assert granted and expired == ["a"] and set(after["holders"]) == {"b"}
    assert after["released"] == [{"id": "a", "since": 0.0, "at": 10.5,
                                  "why": "held longer than the TTL of 10 s"}]


def test_steady_state_and_force_release() -> None:
    rule = GroupRule(1, None)
    assert steady_state(None, "g", "a", rule, 0.0) == (None, (False, []))
    sem, _ = pre_reboot(None, "g", "a", rule, 0.0)
    freed, (held, _) = steady_state(sem, "g", "a", rule, 1.0)
    assert held and freed is not None and freed["holders"] == {} and freed["released"] == []
    assert force_release(None, "g", "a", rule, 0.0) == (None, False)
    forced, released = force_release(sem, "g", "a", rule, 2.0)
    assert released and forced is not None and forced["holders"] == {}
    assert forced["released"][0]["why"] == "released by an operator"


def test_the_configuration_is_checked() -> None:
    config = parse_config({"slots": 3, "ttl": 600, "groups": {"canary": {"slots": 1},
                                                             "late": {"ttl": 5}}}, 1)
    assert config.rule("other") == GroupRule(3, 600.0)
    assert config.rule("canary") == GroupRule(1, 600.0)
    assert config.rule("late") == GroupRule(3, 5.0)
    assert parse_config(None, 4).rule("x") == GroupRule(4, None)
    for bad, words in (({"slots": -1}, "slots"), ({"slots": True}, "slots"),
                       ({"ttl": 0}, "ttl"), ({"groups": {"a b": {}}}, "group name"),
                       ({"groups": {"a": {"slot": 1}}}, "slots and ttl only"),
                       ({"adminToken": "short"}, "16 characters"), ({"tll": 5}, "unknown"),
                       (["slots"], "mapping")):
        with pytest.raises(ConfigInvalid, match=words):
            parse_config(bad, 1)


def test_an_etcd_endpoint_with_credentials_is_refused_without_echoing_them() -> None:
    from reconciler.fleet.store import Etcd

    with pytest.raises(ValueError, match="carries credentials") as refused:
        Etcd(["http://operator:hunter2-secret@127.0.0.1:2379"])
    assert "hunter2-secret" not in str(refused.value)
