"""A rejected spec is recorded promptly, even while a long staging runs.

The channel is served slowly (``sim run --channel-rate``) so that staging
takes many seconds; two distinct bad revisions written during it are each
recorded within 5 s of being written, and the second fixed before the staging
ends is recorded all the same. The measured delays are printed (``-s``).
"""

from __future__ import annotations

import time

import pytest

from tests.device import SimDevice

pytestmark = pytest.mark.slow

ALLOWED_S = 5.0


def _rejections(device: SimDevice) -> list[dict[str, object]]:
    return [r for r in device.audit_file_records() if r["action"] == "spec-rejected"]


def test_rejected_specs_are_recorded_promptly_while_a_staging_runs(device: SimDevice) -> None:
    device.start("--channel-rate", "300")  # 3 MiB at 300 kB/s: about 10 s of staging
    good = device.spec.read_text()
    device.edit_spec(version="1.0.1")
    device.wait_for(lambda: (device.state().get("staging") or {}).get("done", 0) > 0, 30,
                    "the staging to start writing")

    delays = []
    for n, bad in enumerate(["spec: [unclosed\n", "apiVersion: kruxos.io/v1\nkind: Nope\n"], 1):
        device.edit_spec(text=bad)
        written = time.monotonic()
        def recorded(n: int = n) -> bool:
            return len(_rejections(device)) >= n

        device.wait_for(recorded, 30, f"bad revision {n} to be recorded")
        delays.append(time.monotonic() - written)
    device.edit_spec(text=good.replace("version: 1.0.0", "version: 1.0.1"))
    print(f"\nspec-rejected recorded {', '.join(f'{d:.2f} s' for d in delays)} after the "
          "bad revisions were written, during a staging")

    assert all(d <= ALLOWED_S for d in delays), delays
    staging = device.state().get("staging")
    assert staging is not None, "the staging ended before the test could check promptness"
    rejected = _rejections(device)
    assert len(rejected) == 2 and rejected[0]["spec_revision"] != rejected[1]["spec_revision"]
    device.wait_status("1.0.1", "CONFIRMED", timeout=90)
    assert len(_rejections(device)) == 2

