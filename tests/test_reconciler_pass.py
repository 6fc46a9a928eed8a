"""One reconcile pass on a real simulated device's files (no daemon loop)."""

from __future__ import annotations

import resource
import signal
from pathlib import Path
from typing import Any

from reconciler.actions import Action, Outcome
from reconciler.config import load_device
from reconciler.reconcile import Reconciler
from reconciler.spec import UpdatePolicy


def test_no_action_runs_when_the_audit_trail_cannot_be_written(device_dir: Path) -> None:
    reconciler = Reconciler(load_device(device_dir / "device.yaml"),
                            rebooter=lambda reason: None)
    ran: list[Action] = []

    def spy(action: Action, policy: UpdatePolicy | None,
            spec_revision: str | None = None) -> Outcome:
        ran.append(action)
        return Outcome(True, "")

    reconciler.executor.run = spy  # type: ignore[method-assign]
    first = reconciler.run_pass("daemon")
    assert first.outcome is not None and len(ran) == 1
    audit_file = next((device_dir / "data" / "audit").glob("audit-*.jsonl"))
    spec = device_dir / "spec.yaml"
    spec.write_text(spec.read_text().replace("version: 1.0.0", "version: 1.0.1"))
    # A real write failure: the file-size limit stops the next audit append part-way.
    limit = audit_file.stat().st_size + 40
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler: Any = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        blocked = reconciler.run_pass("spec")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert blocked.outcome is None, "an action ran although its decision was not recorded"
    assert len(ran) == 1
    assert blocked.wake_at is not None  # it tries again soon
    assert reconciler.audit.verify().ok


def test_revoked_keys_accept_a_bare_keyid_or_a_pub_path(device_dir: Path) -> None:
    from reconciler.release.keys import keyid_of, load_public_key, load_revoked

    config = device_dir / "device.yaml"
    keyid = keyid_of(load_public_key(device_dir / "keys" / "release.pub"))
    text = config.read_text().replace("trustedKeys:", f"revokedKeys: [{keyid}, keys/release.pub]\n"
                                      "trustedKeys:")
    config.write_text(text)
    device = load_device(config)
    assert device.revoked_keys[0] == keyid
    assert load_revoked(device.revoked_keys) == {keyid}
