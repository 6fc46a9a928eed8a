"""What moving from the booted release to the desired one needs: a slot update, a service
update, or nothing; derived from the two releases' signed components (pure).

A release is made of a root image and the service artifacts it carries
(``docs/channel.md``, "Service artifacts"). Only a different root image needs
a reboot; the same root image with other services needs only those services
switched and restarted. The answer is derived from the two signed entries on
the device, never looked up in a table of release pairs, so any two releases
of a channel compare, in either direction.

This module is part of the decision core: no I/O, no clock; the adapters hand
it plain values (:meth:`reconciler.release.metadata.Release.components`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

NeedKind = Literal["slot", "services", "none"]


@dataclass(frozen=True)
class ServicePart:
    """One service artifact as a release signs it: what decides whether it changed."""

    version: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Components:
    """What a release is made of: its root image (by content) and each service by name."""

    version: str
    root_sha256: str
    root_size: int
    services: Mapping[str, ServicePart] = field(default_factory=dict)


@dataclass(frozen=True)
class UpdateNeed:
    """The kind of update a move needs, the services it touches, and a sentence saying why.

    For ``services``: ``changed`` are switched and restarted, ``added`` installed
    and started, ``removed`` stopped and retired. For ``slot`` and ``none`` the
    three are empty: a new root image carries its own services.
    """

    kind: NeedKind
    reason: str
    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def services(self) -> tuple[str, ...]:
        """Every service the update touches, by name."""
        return tuple(sorted((*self.changed, *self.added, *self.removed)))


def update_needed(booted: Components | None, desired: Components) -> UpdateNeed:
    """What moving from ``booted`` to ``desired`` needs.

    ``booted`` is ``None`` when the channel does not list the release the
    device runs (it was withdrawn, or the device was imaged from elsewhere).
    The answer is then a slot update, the safe one: without the booted
    release's signed components the device cannot know what its running root
    image and services are made of, so it cannot prove that only services
    differ; a slot update installs the whole desired release, root image and
    services, and its trial and rollback protect the device if it fails.
    """
    if booted is None:
        return UpdateNeed("slot", f"the booted release is not on the channel: a slot update to "
                                  f"{desired.version} (what runs cannot be compared)")
    if (booted.root_sha256, booted.root_size) != (desired.root_sha256, desired.root_size):
        return UpdateNeed("slot", f"{desired.version} has another root image than "
                                  f"{booted.version}: a slot update (the new image carries its "
                                  "own services)")
    return _service_need(booted, desired)


def _service_need(booted: Components, desired: Components) -> UpdateNeed:
    old, new = booted.services, desired.services
    changed = tuple(sorted(n for n in new.keys() & old.keys() if new[n] != old[n]))
    added = tuple(sorted(new.keys() - old.keys()))
    removed = tuple(sorted(old.keys() - new.keys()))
    if not (changed or added or removed):
        return UpdateNeed("none", f"{desired.version} has the root image and services of "
                                  f"{booted.version}: nothing to update")
    parts = ([f"{n} {old[n].version} → {new[n].version}" for n in changed]
             + [f"{n} {new[n].version} added" for n in added] + [f"{n} removed" for n in removed])
    return UpdateNeed("services", f"{desired.version} has the root image of {booted.version}; "
                                  f"services differ ({', '.join(parts)}): a service update, "
                                  "no reboot", changed, added, removed)
