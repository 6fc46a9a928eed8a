"""The container engine of a ``runtime: docker`` device: what it reports, and the steps of a
container update on it (pull, swap, probe, confirm, roll back), through the Docker SDK.

Each step writes the state file *before* it touches the engine, so a crash at any
point leaves a record the next pass reads together with what the engine reports
(``docs/containers.md``)::

    pull:     images.pull(REPOSITORY, tag=sha256:HEX)   the engine verifies the content
              ─► the image's RepoDigests must name REPOSITORY@sha256:HEX, else refused
    swap:     record {step: swapping, old_image_id}  ─► stop the old container (graceful)
              ─► rename it NAME-previous (kept for a rollback)  ─► create NAME from the
              image *by its digest*, same volumes  ─► start  ─► record {step: started}
              (a start that fails: its ``Created`` leftover removed, {step: start-failed})
    confirm:  remove NAME-previous; the old image is kept until the next confirm
    rollback: record the version as failed  ─► stop and remove NAME  ─► rename
              NAME-previous back to NAME and start it  ─► the update ends

The Docker SDK is imported with this module, which the reconciler imports only for a
``runtime: docker`` device (:func:`runtime_for`): a slot device never pays for it.

Secrets come from the configured secrets file at creation and go only to the engine;
they are never recorded in the state file, the audit trail or any message. The
failpoints ``container.*`` (:mod:`reconciler.failpoints`) kill the process between
the steps for the tests.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from reconciler.actions import (
    ConfirmContainer,
    ProbeContainer,
    PullImage,
    RollbackContainer,
    SwapContainer,
)
from reconciler.config import ContainerConfig, Device, read_secrets_file
from reconciler.container_rules import RELEASE, UPDATE
from reconciler.decide import count_probe
from reconciler.errors import ReleaseError, StateError, TemporaryError
from reconciler.failpoints import failpoint
from reconciler.health import HealthAnswer, rollback_reason
from reconciler.observed import ChannelView, ContainerView, EngineContainer
from reconciler.redact import redact
from reconciler.store import StateStore

#: What the old container is renamed to while the new one is on trial.
PREVIOUS_SUFFIX = "-previous"
#: Labels on the containers the reconciler makes (for people and ``docker ps``).
VERSION_LABEL = "io.kruxos.version"
ENGINE_RETRY_S = 10.0
_QUOTE = 160


def _said(exc: BaseException) -> str:
    """What the engine said, short, with every registered secret masked."""
    text = getattr(exc, "explanation", None) or str(exc)
    return redact(" ".join(str(text).split()))[:_QUOTE]


class ContainerRuntime:
    """The device's container on its engine (``device.container``), one client per runtime."""

    def __init__(self, device: Device) -> None:
        if device.container is None:
            raise StateError("container runtime: the device config has no container section")
        self.device = device
        self.cfg: ContainerConfig = device.container
        self._client: docker.DockerClient | None = None

    @property
    def previous_name(self) -> str:
        """The old container's name while the new one is on trial."""
        return self.cfg.name + PREVIOUS_SUFFIX

    def client(self) -> docker.DockerClient:
        """The engine's client, made at first use (an engine that is down is an answer)."""
        if self._client is None:
            try:
                self._client = docker.DockerClient(base_url=self.cfg.engine, version="auto",
                                                   timeout=60)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                raise TemporaryError(f"container engine {self.cfg.engine}: {_said(exc)}",
                                     ENGINE_RETRY_S) from exc
        return self._client

    def _engine(self, what: str, step: Callable[[], Any]) -> Any:
        """Run one engine call; a failure of the engine (not of a release) is temporary."""
        try:
            return step()
        except docker.errors.NotFound:
            raise
        except (docker.errors.DockerException, requests.RequestException) as exc:
            self._client = None
            raise TemporaryError(f"container engine: {what}: {_said(exc)}",
                                 ENGINE_RETRY_S) from exc

    def _get(self, name: str) -> Any:
        """The container called ``name``, or ``None``."""
        try:
            return self._engine(f"inspect {name}", lambda: self.client().containers.get(name))
        except docker.errors.NotFound:
            return None

    # ---- what the engine reports -----------------------------------------------------------

    def view(self, channel: ChannelView, recorded: dict[str, Any]) -> ContainerView:
        """The container, the kept old one, the signed digests the engine holds, and the
        release the container runs (from its image's digests, else the recorded release)."""
        try:
            current, previous = self._get(self.cfg.name), self._get(self.previous_name)
            digests = self._pulled_digests()
        except TemporaryError as exc:
            return ContainerView(self.cfg.name, engine_error=str(exc).split(": ", 1)[-1])
        inside = {c.id for c in (current, previous) if c is not None} & own_container_ids()
        if inside:
            return ContainerView(self.cfg.name, engine_error=(
                f"kruxos runs inside the container it would replace ({self.cfg.name}, "
                f"{next(iter(inside))[:12]}): it would stop itself; run it on the host or as a "
                "sidecar container (docs/containers.md)"))
        by_digest = {ref.partition("@")[2]: version for version, ref in channel.images.items()}
        held = {d for found in digests.values() for d in found}
        now = _engine_container(current)
        version = None
        if now is not None:
            version = recorded.get("version") if recorded.get("image_id") == now.image_id \
                else None
            version = version or next((by_digest[d] for d in digests.get(now.image_id, ())
                                       if d in by_digest), None)
        kept = recorded.get("kept_image")
        kept = kept if isinstance(kept, str) and kept in digests else None
        kept_version = recorded.get("kept_version") if kept else None
        return ContainerView(self.cfg.name, now, _engine_container(previous), version,
                             frozenset(d for d in by_digest if d in held), kept_image=kept,
                             kept_version=kept_version if isinstance(kept_version, str)
                             else None)

    def _pulled_digests(self) -> dict[str, tuple[str, ...]]:
        """By image id, the digests under the configured repository the engine holds."""
        images = self._engine("list images",
                              lambda: self.client().images.list(name=self.cfg.repository))
        return {image.id: tuple(ref.partition("@")[2]
                                for ref in image.attrs.get("RepoDigests") or []
                                if ref.partition("@")[0] == self.cfg.repository)
                for image in images}

    # ---- pull ------------------------------------------------------------------------------

    def pull(self, action: PullImage) -> str:
        """Pull by the signed digest; an image that does not carry it is refused."""
        ref = f"{self.cfg.repository}@{action.digest}"
        try:
            said = self._engine(f"pull {ref}", lambda: self._pull_stream(action.digest))
            if said is not None and _not_the_content(said):
                raise ReleaseError(f"{action.version}: the registry's content for {ref} is not "
                                   f"what the signed digest names; refused ({said})")
            if said is not None:
                raise TemporaryError(f"{action.version}: the pull of {ref} failed ({said})",
                                     60.0)
            image = self._engine(f"inspect {ref}", lambda: self.client().images.get(ref))
        except docker.errors.NotFound as exc:
            raise TemporaryError(f"{action.version}: the registry has no image {ref} "
                                 f"({_said(exc)})", 60.0) from exc
        refs = image.attrs.get("RepoDigests") or []
        if ref not in refs:
            raise ReleaseError(f"{action.version}: the engine's image {image.id[:19]}… does not "
                               f"carry the signed digest {action.digest}; refused")
        failpoint("container.pulled")
        return f"pulled {ref} (image {image.id[:19]}…)"

    def _pull_stream(self, digest: str) -> str | None:
        """Pull, reading the engine's progress stream to its end: what went wrong in it
        (the SDK's own pull drops it), or ``None``."""
        error = None
        for event in self.client().api.pull(self.cfg.repository, tag=digest, stream=True,
                                            decode=True):
            if isinstance(event, dict) and event.get("error"):
                error = redact(" ".join(str(event["error"]).split()))[:_QUOTE]
        return error

    def _image(self, version: str, digest: str) -> Any:
        ref = f"{self.cfg.repository}@{digest}"
        try:
            return self._engine(f"inspect {ref}", lambda: self.client().images.get(ref))
        except docker.errors.NotFound as exc:
            raise StateError(f"{version}: the image {ref} is not pulled") from exc

    # ---- swap ------------------------------------------------------------------------------

    def swap(self, action: SwapContainer, store: StateStore, now: datetime) -> str:
        """Keep the old container (stopped, renamed), create and start the new one.

        Idempotent: a swap interrupted at any point is finished by running it again
        (the record says what the old image was; the engine says what exists)."""
        image = self._image(action.version, action.digest)
        current = self._get(self.cfg.name)
        self._record_swap(action, store, now, current, image.id)
        failpoint("container.recorded")
        if current is not None and current.attrs.get("Image") != image.id:
            self._keep_old(current)
        elif current is not None:  # made by a swap a crash interrupted: made again
            self._engine("remove the unfinished container",
                         lambda: current.remove(force=True))
        new = self._engine("create the container", lambda: self.client().containers.create(
            image.id, name=self.cfg.name, **self._run_options(action.version)))
        failpoint("container.created")
        try:
            self._engine("start the container", new.start)
        except (TemporaryError, docker.errors.NotFound) as exc:
            problem = _said(exc) if isinstance(exc, docker.errors.NotFound) \
                else str(exc).split(": ", 2)[-1]
            with contextlib.suppress(docker.errors.DockerException, TemporaryError):
                self._engine("remove the container that did not start",
                             lambda: new.remove(force=True))
            _put(store, lambda u: u.update(step="start-failed", problem=problem))
            raise ReleaseError(f"{action.version}: the new container did not start "
                              f"({problem}); its leftover was removed") from exc
        _put(store, lambda u: u.update(step="started"))
        failpoint("container.started")
        return f"{self.cfg.name} runs {action.version} (image {image.id[:19]}…); the old " \
               f"container is kept as {self.previous_name}"

    def _record_swap(self, action: SwapContainer, store: StateStore, now: datetime,
                     current: Any, new_image: str) -> None:
        """The update's record, before the engine is touched (kept when resuming)."""
        recorded = store.section(UPDATE)
        if recorded.get("version") == action.version and recorded.get("step") == "swapping":
            return
        previous = self._get(self.previous_name)
        old = previous if current is None or current.attrs.get("Image") == new_image \
            else current
        tp = action.policy
        store.put(UPDATE, {
            "version": action.version, "from_version": action.from_version,
            "digest": action.digest, "step": "swapping",
            "old_image_id": old.attrs.get("Image") if old is not None else None,
            "policy": {"url": tp.url, "interval_s": tp.interval.total_seconds(),
                       "timeout_s": tp.timeout.total_seconds(),
                       "success_threshold": tp.success_threshold, "automatic": tp.automatic},
            "swapped_at": now.isoformat()})

    def _keep_old(self, current: Any) -> None:
        """Stop the old container gracefully and rename it (a stale kept one is dropped)."""
        stale = self._get(self.previous_name)
        if stale is not None:
            self._engine("remove a stale kept container", lambda: stale.remove(force=True))
        self._engine("stop the old container",
                     lambda: current.stop(timeout=self.cfg.stop_timeout))
        failpoint("container.stopped")
        self._engine("rename the old container", lambda: current.rename(self.previous_name))
        failpoint("container.renamed")

    def _run_options(self, version: str) -> dict[str, Any]:
        """What ``docker run`` would be told, from the device config (secrets read now)."""
        cfg = self.cfg
        env = dict(cfg.environment)
        if self.device.container_secrets is not None:
            env.update(read_secrets_file(self.device.container_secrets))
        options: dict[str, Any] = {
            "environment": env, "labels": {VERSION_LABEL: version}, "detach": True,
            "volumes": {name: {"bind": path, "mode": "rw"} for name, path in cfg.volumes.items()},
            "privileged": cfg.privileged, "security_opt": cfg.security_opt or None}
        if cfg.network == "host":
            options["network_mode"] = "host"
        else:
            options["ports"] = dict(_port(p) for p in cfg.ports)
        if cfg.capabilities is not None:
            options["cap_add"] = cfg.capabilities.add or None
            options["cap_drop"] = cfg.capabilities.drop or None
        return options

    # ---- probe, confirm, roll back ---------------------------------------------------------

    def probe(self, action: ProbeContainer, store: StateStore,
              prober: Callable[[str, float], HealthAnswer], now: datetime) -> str:
        """Ask once; the progress is kept with the update for the next pass to judge."""
        answer = prober(self.device.map_url(action.url), action.timeout_s)
        progress = count_probe(action.progress, answer.healthy, answer.summary(),
                               rollback_reason(answer, timed_out=True), now)
        record = {"first_probe_at": _iso(progress.first_probe_at),
                  "last_probe_at": _iso(progress.last_probe_at),
                  "consecutive_ok": progress.consecutive_ok, "probes": progress.probes,
                  "last_summary": progress.last_summary,
                  "timeout_reason": progress.timeout_reason}
        _put(store, lambda u: u.update(health=record))
        return answer.summary()

    def confirm(self, action: ConfirmContainer, store: StateStore) -> str:
        """Remove the kept old container; keep its image until the next confirm, then drop
        the image kept before (unless something still uses it)."""
        previous = self._get(self.previous_name)
        if previous is not None:
            self._engine("remove the old container", lambda: previous.remove(force=True))
        current = self._get(self.cfg.name)
        update, release = store.section(UPDATE), store.section(RELEASE)
        image_id = current.attrs.get("Image") if current is not None else None
        dropped = self._drop_image(release.get("kept_image"),
                                   {image_id, update.get("old_image_id")})

        def done(doc: dict[str, Any]) -> None:
            doc[RELEASE] = {"version": action.version, "image_id": image_id,
                            "kept_image": update.get("old_image_id"),
                            "kept_version": update.get("from_version")}
            doc.pop(UPDATE, None)
            doc.pop("request", None)  # a confirm asked for is done; a rollback is too late

        store.update(done)
        failpoint("container.confirmed")
        return f"{action.version} confirmed: {self.previous_name} removed, its image kept " \
               f"until the next confirm{dropped}"

    def _drop_image(self, image_id: Any, keep: set[Any]) -> str:
        if not isinstance(image_id, str) or image_id in keep:
            return ""
        try:
            self._engine("remove an old image", lambda: self.client().images.remove(image_id))
        except (docker.errors.NotFound, TemporaryError):
            return ""
        return f"; the image kept before ({image_id[:19]}…) removed"

    def rollback(self, action: RollbackContainer, store: StateStore, now: datetime) -> str:
        """Keep the failure first (a crash then finishes the rollback, never confirms), then
        remove the new container and start the old one under its name: the kept one, else
        one made anew from the image it ran (a confirmed update undone by a person: the
        image is kept until the next confirm). The failed release's image is then dropped.
        Never gated."""

        def begin(doc: dict[str, Any]) -> None:
            update = dict(doc.get(UPDATE) or {})
            if not update:  # a confirmed update, undone by a person
                update = {"version": action.version, "from_version": action.from_version,
                          "digest": "", "step": "started", "old_image_id": action.image,
                          "undo": True}
            update["rolling_back"] = action.reason
            doc[UPDATE] = update
            doc["failed"] = {"version": action.version, "reason": action.reason,
                             "at": now.isoformat()}
            doc.pop("request", None)  # taken: a crash from here on finishes the rollback

        store.update(begin)
        failpoint("container.rolling-back")
        update = store.section(UPDATE)
        old_image = update.get("old_image_id") or action.image
        current, previous = self._get(self.cfg.name), self._get(self.previous_name)
        failed_image = None
        if current is not None and (previous is not None
                                    or current.attrs.get("Image") != old_image):
            failed_image = current.attrs.get("Image")
            self._engine("stop the new container",
                         lambda: current.stop(timeout=self.cfg.stop_timeout))
            self._engine("remove the new container", lambda: current.remove(force=True))
            current = None
        failpoint("container.new-removed")
        if previous is not None:
            self._engine("rename the old container back",
                         lambda: previous.rename(self.cfg.name))
            current = previous
        elif current is None and isinstance(old_image, str):
            current = self._engine("create the container again from the image it ran",
                                   lambda: self.client().containers.create(
                                       old_image, name=self.cfg.name,
                                       **self._run_options(action.from_version or "?")))
        back = "nothing (there was no container before)"
        if current is not None:
            current.reload()
            if current.status != "running":
                self._engine("start the old container", current.start)
            back = action.from_version or "the previous container"
        dropped = self._drop_release_image(failed_image, old_image)

        def end(doc: dict[str, Any]) -> None:
            if update.get("undo"):
                doc[RELEASE] = {"version": action.from_version, "image_id": old_image}
            doc.pop(UPDATE, None)

        store.update(end)
        return f"{self.cfg.name} runs {back} again; {action.version} blocked: " \
               f"{action.reason}{dropped}"

    def _drop_release_image(self, image_id: Any, running: Any) -> str:
        """Untag the failed release's image (its ``REPOSITORY@sha256`` references): it is
        blocked, and a retry pulls it again. Other names of it, and an image in use, stay."""
        if not isinstance(image_id, str) or image_id == running:
            return ""
        try:
            image = self._engine("inspect the failed image",
                                 lambda: self.client().images.get(image_id))
            refs = [r for r in image.attrs.get("RepoDigests") or []
                    if r.partition("@")[0] == self.cfg.repository]
            for ref in refs:
                self._untag(ref)
        except (docker.errors.NotFound, TemporaryError):
            return ""
        return f"; its image {image_id[:19]}… dropped" if refs else ""

    def _untag(self, ref: str) -> None:
        self._engine(f"untag {ref}", lambda: self.client().images.remove(ref))


#: A container engine's per-container directory in a mount source: Docker's
#: ``/var/lib/docker/containers/ID/hostname``, Podman's ``…/overlay-containers/ID/userdata/…``.
_CONTAINER_DIR = re.compile(r"/(?:containers|overlay-containers)/([0-9a-f]{64})/")


def own_container_ids(mountinfo: str | None = None) -> set[str]:
    """The IDs of the container this process runs in (empty on a host), from the engine's
    per-container files mounted into it (``/etc/hostname``, ``/etc/hosts``,
    ``/etc/resolv.conf``): the same on cgroup v1 and v2, Docker and Podman."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(errors="replace")
        except OSError:
            return set()
    found = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
            found.update(_CONTAINER_DIR.findall(fields[3]))
    return found


def _not_the_content(said: str) -> bool:
    """Whether an engine's pull error says the content does not match its digest (a
    tampering registry or mirror: refused), not that it could not be fetched (retried)."""
    lowered = said.lower()
    return "verification failed" in lowered or "digest did not match" in lowered \
        or "digest mismatch" in lowered


def _engine_container(container: Any) -> EngineContainer | None:
    if container is None:
        return None
    state = container.attrs.get("State") or {}
    return EngineContainer(container.name, str(container.attrs.get("Image")),
                           str(state.get("Status") or container.status))


def _port(spec: str) -> tuple[str, Any]:
    """``[IP:]HOST:CONTAINER[/proto]`` as the SDK's ``ports`` entry."""
    *outside, inside = spec.rsplit(":", 2) if spec.count(":") == 2 else spec.split(":")
    proto = "tcp"
    if "/" in inside:
        inside, proto = inside.split("/")
    host = (outside[0], int(outside[1])) if len(outside) == 2 else int(outside[0])
    return f"{inside}/{proto}", host


def _put(store: StateStore, change: Callable[[dict[str, Any]], None]) -> None:
    def apply(doc: dict[str, Any]) -> None:
        update = dict(doc.get(UPDATE) or {})
        change(update)
        doc[UPDATE] = update
    store.update(apply)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
