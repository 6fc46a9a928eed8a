"""Named kill points for crash tests (etcd's gofail, TiKV's fail-rs), no-ops unless armed.

``KRUXOS_FAILPOINTS=install.invalidated=kill@1,install.block-written=kill@3``
makes the process kill itself with SIGKILL (no cleanup, no ``finally``, no
flush: what a crash or the OOM killer does) the Nth time it passes the named
point. The variable is read once, when this module is imported; unset, a
point costs one dictionary lookup.

The points (each one names the moment right after what it says):

==============================  ===========================================================
``install.invalidated``         the slot's identity is destroyed and synced; no block yet
``install.block-written``       one more verified block is written (``kill@N``: the Nth)
``install.read-back``           every byte is read back and matches; no identity yet
``install.identity-written``    the slot's identity is written and synced; not ``staged``
==============================  ===========================================================
"""

from __future__ import annotations

import os
import re
import signal

ENV = "KRUXOS_FAILPOINTS"
_ITEM = re.compile(r"^([a-z][a-z0-9.-]{0,63})=kill@([1-9][0-9]{0,8})$")


def parse(text: str) -> dict[str, int]:
    """``name=kill@N`` items, comma-separated, as ``{name: N}``; ``ValueError`` names a bad one."""
    plan: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(f"{ENV}: {item[:60]!r} is not name=kill@N (N from 1)")
        plan[match.group(1)] = int(match.group(2))
    return plan


_PLAN = parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Pass the point ``name``; die here by SIGKILL if the environment armed it for this hit."""
    if not _PLAN or name not in _PLAN:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    if _HITS[name] == _PLAN[name]:
        os.kill(os.getpid(), signal.SIGKILL)
