"""Named kill points for crash tests (etcd's gofail, TiKV's fail-rs), no-ops unless armed.

``KRUXOS_FAILPOINTS=install.invalidated=kill,install.block-written=kill@3``
makes the process kill itself with SIGKILL (no cleanup, no ``finally``, no
flush: what a crash or the OOM killer does) the Nth time it passes the named
point (``kill`` is ``kill@1``). ``stop`` (``stop@N``) stops the process there
with SIGSTOP instead, holding it at that line with everything it wrote still
in the page cache: the QEMU device's power cuts (``tests/system/``) wait for
the stopped process, then cut the machine's power at exactly that moment.
The variable is read once, when this module is imported. Unset,
:func:`failpoint` *is* an empty function: a call costs what calling
``lambda name: None`` costs (``bench/failpoint_bench.py`` measures it), and
the points that would build their name first check :data:`ARMED`.

A kill keeps the page cache, so a point between a write and its fsync tests
what a crashed process leaves, not what a power cut leaves (that is
``tests/powercut/``). The crash matrix (``tests/crash/``, ``docs/reliability.md``)
kills a simulated device's daemon at each point below, on each flow the point
lies on, and checks what the device comes back to.

Each point names the moment right after what it says:

=================================  =============================================================
point                              the moment (where)
=================================  =============================================================
``decided.KIND``                   the decision to run action KIND is fsynced in the audit
                                   trail; the action has not started (``reconcile.py``).
                                   KIND: ``stage``, ``reboot`` (arm a trial and reboot),
                                   ``probe``, ``confirm``, ``rollback``, ``rollback-request``,
                                   ``pin``, ``cancel``, ``resume``…
``audit.appended``                 a record is appended to the trail, not fsynced, the head
                                   not moved (``audit.py``)
``audit-head.temp-written``        the head's temp file is fsynced, not renamed (``audit.py``
                                   through ``durable.atomic_write``)
``audit-head.renamed``             the head is renamed into place, its directory not fsynced
``state.temp-written``             ``state.json``'s temp file is fsynced, not renamed
                                   (``store.py``)
``state.renamed``                  ``state.json`` renamed, directory not fsynced, the copy
                                   (``state.copy.json``) not yet written
``state-copy.temp-written``        the copy's temp file written, not renamed
``state-copy.renamed``             the copy renamed, directory not fsynced
``install.invalidated``            the slot's identity is destroyed and synced; no block yet
``install.block-fetched``          a block is received and verified, not yet written: the
                                   download stops at a block boundary (``kill@N``: the Nth)
``install.block-written``          one more verified block is pwritten, not fdatasynced
``install.synced``                 the written blocks are fdatasynced; the resume point
                                   that names them is not written yet
``resume.temp-written``            the resume point's temp file is written, not renamed
``resume.renamed``                 the resume point renamed, its directory not fsynced
``install.read-back``              every byte is read back and matches; no identity yet
``install.identity-written``       the slot's identity is written and synced; not ``staged``
``stage.written``                  the stager is done (slot marked staged); the state
                                   still shows the staging (``executor.py``)
``trial.armed``                    the trial is armed in the boot env; no reboot yet
``confirm.marked``                 the trial slot is marked good in the boot env; the state
                                   still holds the trial, no outcome is recorded
``rollback.env-written``           a rollback's boot env is written (trial slot bad, the
                                   default the good one); no reboot yet
``request.applied``                a person's request is written to the state; it is still
                                   in the inbox
``service.block-written``          a verified block of a service artifact is written to its
                                   partial file, not synced (``services.py``; ``kill@N``)
``service.staged``                 a service artifact is whole, verified and renamed into the
                                   store's objects; no record names it yet
``service-record.temp-written``    a service's record (current, previous, uncommitted) is
                                   fsynced to its temp file, not renamed (``services.py``
                                   through ``durable.atomic_write``): switch, commit, restore
``service-record.renamed``         the record renamed, its directory not fsynced; the
                                   ``current`` link not yet changed to agree with it
``service-link.temp-written``      the new ``current`` link made under a temporary name
``service-link.renamed``           the ``current`` link renamed into place, dir not fsynced
``service-data.copied``            a service's data is copied into a temporary directory,
                                   every file and directory fsynced; not renamed
                                   (``service_data.py``); no switch yet
``service-data.renamed``           the copy renamed to ``copies/NAME/VERSION``, its directory
                                   not fsynced; the store not switched
``service-data.moved-aside``       a put-back: the migrated data renamed aside; the copy not
                                   yet renamed into its place (no data dir at all)
``service-data.put-back``          the copy renamed into the data dir's place, both parents
                                   fsynced; the migrated data still aside
``services.staged``                a service update's artifacts are in the store, the state
                                   file does not record it staged yet (``executor.py``)
``services.switched``              the store switched (uncommitted), the state file still says
                                   staged (``observe`` reads the switch from the store)
``services.restarted``             the services restarted, the step not recorded
``services.committed``             the store committed, the state file not yet told
``services.restoring``             the failure kept in the state file, the store not restored
``container.pulled``               the image pulled by its signed digest, nothing recorded
``container.recorded``             the swap recorded (``swapping``), the engine not touched
``container.stopped``              the old container stopped, not renamed
``container.renamed``              the old container kept as NAME-previous, no new one yet
``container.created``              the new container created, not started
``container.started``              the new container started, the step recorded
``container.confirmed``            the confirm recorded, the old container removed
``container.rolling-back``         the failure kept in the state file, the engine untouched
``container.new-removed``          the new container removed, the old one not renamed back
                                   (all in ``containers.py``)
``fleet.taken``                    the reboot slot granted and recorded, the trial not armed
                                   (``fleet/device.py``: the next pass fences and reboots)
``grubenv.overwritten``            GRUB: the env block overwritten in place, not fsynced
                                   (``grubenv.py``: GRUB reads the sectors, not the journal)
``grubenv.temp-written``           GRUB: a new env's temp file written, not renamed (only
                                   when ``grubenv`` is missing or not one block)
``grubenv.renamed``                GRUB: a new env renamed over ``grubenv``, dir not fsynced
``grub.env-written``               GRUB: the env written; its backup (``grubenv.bak``) not
``grubenv-backup.temp-written``    GRUB: the backup's temp file written, not renamed
``grubenv-backup.renamed``         GRUB: the backup renamed into place, dir not fsynced
``ubootenv.copy-written``          U-Boot: one redundant copy overwritten in place, not
                                   fsynced; the other copy still the valid older one
                                   (``ubootenv.py``)
``uboot.env-written``              U-Boot: the env copy written; the backup file not
                                   (``uboot.py``)
``bls.entry-renamed``              BLS: a boot entry renamed (counted, uncounted or made
                                   unbootable), its directory not fsynced, ``loader.conf``
                                   not yet rewritten when the rename comes first (``bls.py``)
``loader-conf.temp-written``       BLS: ``loader.conf``'s temp file written, not renamed
``loader-conf.renamed``            BLS: ``loader.conf`` renamed into place, dir not fsynced
=================================  =============================================================

A name is lower-case letters, digits, ``.`` and ``-``; a bad item stops the
process at import with a ``ValueError`` naming it, so a typo never passes a
crash test silently.
"""

from __future__ import annotations

import os
import re
import signal

ENV = "KRUXOS_FAILPOINTS"
_ITEM = re.compile(r"^([a-z][a-z0-9.-]{0,63})=(kill|stop)(?:@([1-9][0-9]{0,8}))?$")
_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def parse(text: str) -> dict[str, tuple[int, str]]:
    """``name=kill``, ``name=kill@N``, ``name=stop`` or ``name=stop@N`` items,
    comma-separated, as ``{name: (N, action)}`` (no ``@N`` is ``@1``); ``ValueError``
    names a bad one."""
    plan: dict[str, tuple[int, str]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(f"{ENV}: {item[:60]!r} is not name=kill, name=stop, "
                             "name=kill@N or name=stop@N (N from 1)")
        plan[match.group(1)] = (int(match.group(3) or 1), match.group(2))
    return plan


_PLAN = parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}
#: Whether any point is armed in this process (points that build their name check it).
ARMED = bool(_PLAN)


def _armed(name: str) -> None:
    """Pass the point ``name``; die (SIGKILL) or stop (SIGSTOP) here if the environment
    armed it for this hit."""
    if name not in _PLAN:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    nth, action = _PLAN[name]
    if _HITS[name] == nth:
        os.kill(os.getpid(), _SIGNALS[action])


def _unarmed(name: str) -> None:
    """Pass the point ``name``: nothing is armed in this process."""


#: Pass the point ``name``; with nothing armed, an empty function.
failpoint = _armed if ARMED else _unarmed
