"""The features this device implements, and which releases it can therefore install.

A release lists in ``requires`` the features a device must implement to
install it correctly (``docs/channel.md``, "Features"). A device installs only
releases whose every requirement is in :data:`FEATURES`; the others stay
visible, with the reason, but are never staged: ``latest`` resolves to the
newest release the device can install, and a pin to another one is refused.

Adding a feature is one change: implement it, add its name to
:data:`FEATURES`, and describe it in the features table of ``docs/channel.md``.
From then on the publisher lists the name in ``requires`` of every release that
needs it (``kruxos release add --requires NAME``), and devices without it skip
those releases instead of misreading them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from fractions import Fraction

from reconciler.release.metadata import ChannelMetadata, Release, semver_key
from reconciler.release.rollout import Hold, hold_of

#: Why a device of each runtime cannot install a release that lacks what it installs: a
#: slot device writes a root image, a container device pulls a container image.
_NO_PAYLOAD = {
    "slots": "has no root image (a container-only release), which a device with slots "
             "cannot install",
    "docker": "has no container image, which a device with runtime: docker needs",
}

#: The features this build of KruxOS implements: ``service-artifacts`` (service updates,
#: no reboot), ``service-data`` (a service's data copied before its switch, put back on a
#: restore; no rollback past a migration it cannot give back), ``container-image`` (a
#: release's container image, signed by digest, for devices with ``runtime: docker``) and
#: ``phased-rollout`` (a release offered to a growing share of devices, ``docs/rollout.md``).
#: The name reserved for the coming one is ``block-index-64k`` (``docs/channel.md``).
FEATURES: frozenset[str] = frozenset({"service-artifacts", "service-data", "container-image",
                                      "phased-rollout"})
#: Releases a refusal names one by one; the rest are counted.
NAMED_REFUSALS = 4


def missing(release: Release, implemented: frozenset[str] | None = None) -> tuple[str, ...]:
    """The features ``release`` requires that ``implemented`` (default :data:`FEATURES`,
    read at the call) lacks, in the release's order."""
    have = FEATURES if implemented is None else implemented
    return tuple(name for name in release.requires if name not in have)


def why_not(release: Release, implemented: frozenset[str] | None = None,
            runtime: str | None = None) -> str | None:
    """Why this device cannot install ``release`` (``requires X, ...``, or it lacks what a
    device of ``runtime`` installs), or ``None``. Without ``runtime`` (the publisher's view)
    only the features are judged."""
    lacking = missing(release, implemented)
    if lacking:
        return f"requires {', '.join(lacking)}, which this device does not implement"
    if runtime == "slots" and not release.has_root_image or \
            runtime == "docker" and release.container_image is None:
        return _NO_PAYLOAD[runtime]
    return None


def installable(releases: Iterable[Release], implemented: frozenset[str] | None = None,
                runtime: str | None = None) -> list[Release]:
    """The releases a device of ``runtime`` can install, in their order."""
    return [r for r in releases if why_not(r, implemented, runtime) is None]


def newest_installable(meta: ChannelMetadata, implemented: frozenset[str] | None = None,
                       runtime: str | None = None, *, now: datetime | None = None,
                       wariness: Fraction | None = None) -> Release | None:
    """What ``latest`` means on this device: the highest version it can install and, given
    ``now`` and the device's ``wariness``, whose rollout has reached it (``docs/rollout.md``);
    without them (the publisher's view) every rollout counts as complete."""
    return max((r for r in installable(meta.releases, implemented, runtime)
                if now is None or wariness is None
                or hold_of(r.version, r.rollout, wariness, now) is None),
               key=lambda r: semver_key(r.version), default=None)


def held_back(meta: ChannelMetadata, now: datetime, wariness: Fraction,
              implemented: frozenset[str] | None = None,
              runtime: str | None = None) -> list[Hold]:
    """The installable releases newer than what ``latest`` resolves to on this device that
    their rollout has not reached yet, newest first."""
    newest = newest_installable(meta, implemented, runtime, now=now, wariness=wariness)
    floor = semver_key(newest.version) if newest is not None else None
    found = [hold for r in installable(meta.releases, implemented, runtime)
             if (floor is None or semver_key(r.version) > floor)
             and (hold := hold_of(r.version, r.rollout, wariness, now)) is not None]
    return sorted(found, key=lambda h: semver_key(h.version), reverse=True)


def skipped(meta: ChannelMetadata, implemented: frozenset[str] | None = None,
            runtime: str | None = None) -> list[tuple[Release, str]]:
    """The releases newer than :func:`newest_installable` that it skipped, newest first."""
    newest = newest_installable(meta, implemented, runtime)
    floor = semver_key(newest.version) if newest is not None else None
    found = [(r, why) for r in meta.releases
             if (why := why_not(r, implemented, runtime)) is not None
             and (floor is None or semver_key(r.version) > floor)]
    return sorted(found, key=lambda item: semver_key(item[0].version), reverse=True)


def refusal_reason(refused: Iterable[tuple[Release, str]]) -> str:
    """One sentence for the audit trail naming the refused releases (the first few)."""
    items = list(refused)
    named = "; ".join(f"{r.version} {why}" for r, why in items[:NAMED_REFUSALS])
    more = len(items) - NAMED_REFUSALS
    return ("releases this device cannot install: " + named
            + (f"; and {more} more" if more > 0 else ""))
