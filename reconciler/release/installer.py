"""The streaming installer: every block verified before it touches the slot.

The order is RAUC's fail-safe order::

    refuse the booted slot ─► refuse an image larger than the slot minus its 4 KiB identity
      ─► before_first_write() ─► destroy the slot's identity, fsync
      ─► receive thread: assemble blocks ─► queue (≤ QUEUE_BLOCKS) ─► this thread:
         SHA-256 == signed block hash? ─► pwrite at its offset ─► every RESUME_BYTES
         or RESUME_SECONDS: fdatasync, then record the resume point
      ─► fsync ─► drop the page cache ─► read the slot back once: each block against its
         signed hash here, the whole SHA-256 on a second thread ─► both match?
      ─► write the slot's identity from the signed metadata, fsync
      ─► success (only now may the caller mark the slot staged)

The image is written from byte 0 of the slot, as the OS build made it; the
slot's identity (:mod:`reconciler.release.identity`) lives in its last 4 KiB
and is zero from before the first block until the read-back matched, so a
slot cut off at any point claims no release, neither the old nor the new.

The socket keeps being read while blocks are hashed, written and synced; a
block reaches the slot only after its hash matched. Memory is a fixed pool of
``QUEUE_BLOCKS + 2`` block buffers while downloading and ``READ_BACK_BUFFERS``
while reading back, whatever the image size; there is no temporary copy. The
index of the next block to fetch is kept in ``resume_file`` (written only after
the blocks before it are fdatasync'ed), so a cut connection, a stop request or
a reboot continues with ``Range: bytes=OFFSET-`` from the last verified block.
A cut connection, a 5xx answer or a stall is ridden out inside the call
(:class:`Retry`): the download resumes from the last verified block after a
backoff with jitter, a bounded number of times, and the result names the
resumes. Past the bound, :class:`ChannelUnavailable` is raised with a delay
that doubles with each failed call in a row (the caller retries); refusals
raise :class:`ReleaseError` with the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from reconciler.durable import atomic_write_json, fsync_dir, read_json
from reconciler.errors import ChannelUnavailable, ReleaseError, StateError, UrlError
from reconciler.failpoints import failpoint
from reconciler.redact import redact
from reconciler.release.identity import (
    LEGACY_MAGIC,
    RECORD_SIZE,
    Origin,
    SlotIdentity,
    capacity,
    invalidate,
    write_identity,
)
from reconciler.release.metadata import Release, format_time
from reconciler.urls import parse_channel_url

RESUME_BYTES = 4 << 20     # written bytes not yet in a durable resume point, at most
RESUME_SECONDS = 1.0       # seconds between two durable resume points, at most
QUEUE_BLOCKS = 4           # received blocks waiting for the writer, at most
READ_BACK_BUFFERS = 4      # blocks read back and waiting for the whole-image hash
BACKOFF_BASE, BACKOFF_MAX = 2.0, 300.0
MIN_RATE = 16 * 1024       # bytes/s a block must average: a trickling server is cut off
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Retry:
    """How one install call rides out a flaky network.

    After a cut connection, a 5xx (or 408/429) answer, a refused connection or
    a stall, the download resumes from the last verified block with ``Range``,
    after waiting ``base * 2**(n-1)`` seconds (at most ``cap``; ``n`` counts the
    failures in a row without a new verified block) times a jitter drawn in
    [0.5, 1) from ``seed`` (the OS's randomness when ``None``). The call gives
    up after ``attempts`` failures in a row without a new block, or when one
    more resume would pass ``resumes`` in all.
    """

    attempts: int = 5
    resumes: int = 16
    base: float = 1.0
    cap: float = 15.0
    seed: int | None = None

    def delay(self, in_a_row: int, rng: random.Random) -> float:
        """The wait before resuming after the ``in_a_row``-th failure in a row."""
        return min(self.base * 2.0 ** (in_a_row - 1), self.cap) * rng.uniform(0.5, 1.0)


@dataclass(frozen=True)
class InstallProgress:
    """One progress event: byte counts, all out of ``total`` (the signed size).

    ``fetched`` counts bytes received from the network by this call; ``verified``
    and ``written`` are the end of the verified / written prefix of the image
    (they start at the resume point); ``durable`` is the end of the prefix the
    resume point records, what survives a crash or a power cut (it trails
    ``written`` by less than ``RESUME_BYTES``, or one block); ``read_back`` grows
    during the final check.
    """

    version: str
    phase: str  # "download", "read-back", "done", "stopped"
    fetched: int
    verified: int
    written: int
    read_back: int
    total: int
    durable: int = 0


@dataclass(frozen=True)
class InstallResult:
    """How an install call ended: ``complete`` only after the read-back matched."""

    version: str
    complete: bool
    next_block: int
    blocks: int
    resumed_from: int
    fetched: int
    message: str
    faults: tuple[str, ...] = ()  # what each resume inside the call recovered from


@dataclass
class _Session:
    release: Release
    fd: int
    resume_file: Path
    slot: str
    progress: Callable[[InstallProgress], None]
    next_block: int = 0
    failures: int = 0
    fetched: int = 0
    saved_block: int = -1
    block_deadline: float = 60.0
    resume_bytes: int = RESUME_BYTES
    resume_seconds: float = RESUME_SECONDS
    saved_at: float = 0.0
    faults: list[str] = field(default_factory=list)

    def _end(self, block: int) -> int:
        return min(max(block, 0) * self.release.block_size, self.release.size)

    def event(self, phase: str, read_back: int = 0) -> None:
        done = self._end(self.next_block)
        self.progress(InstallProgress(self.release.version, phase, self.fetched, done, done,
                                      read_back, self.release.size, self._end(self.saved_block)))

    def due(self) -> bool:
        """Whether the written blocks are to be made durable now (blocks or time)."""
        unsaved = (self.next_block - self.saved_block) * self.release.block_size
        return (unsaved >= self.resume_bytes
                or time.monotonic() - self.saved_at >= self.resume_seconds)

    def save(self) -> None:
        """Make the written blocks durable, then record where to resume."""
        os.fdatasync(self.fd)
        failpoint("install.synced")
        atomic_write_json(self.resume_file, {
            "version": self.release.version, "sha256": self.release.sha256,
            "slot": self.slot, "block_size": self.release.block_size,
            "next_block": self.next_block, "failures": self.failures}, label="resume")
        self.saved_block, self.saved_at = self.next_block, time.monotonic()


class _NetFault(ChannelUnavailable):
    """A network failure the call rides out by resuming; ``kind`` names it for the outcome."""

    def __init__(self, kind: str, message: str, delay: float = 30.0) -> None:
        super().__init__(message, delay)
        self.kind = kind


#: How each kind of fault a resume recovered from is named, singular and plural.
_FAULT_NAMES = {"cut": ("cut connection", "cut connections"),
                "stall": ("stall", "stalls"),
                "connect": ("failed connection", "failed connections"),
                "other": ("other failure", "other failures")}
_RETRIED_STATUS = frozenset({408, 429})


def _fault_kind(exc: BaseException) -> str | None:
    """The kind of a failure a resume may recover from; ``None``: give up at once."""
    if isinstance(exc, _NetFault):
        return exc.kind
    if isinstance(exc, httpx.TimeoutException):
        return "stall"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                        httpx.CloseError)):
        return "cut"
    return None


def describe_faults(faults: tuple[str, ...] | list[str]) -> str:
    """``2 cut connections, 1 server error 503``: the faults counted, first seen first."""
    parts = []
    for kind, n in Counter(faults).items():
        if kind.startswith("http "):
            code = kind.split()[1]
            parts.append(f"{n} server error{'s' if n > 1 else ''} {code}")
        else:
            one, many = _FAULT_NAMES.get(kind, (kind, kind))
            parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts)


def _resumes_note(faults: tuple[str, ...] | list[str]) -> str:
    """`` after 3 resumes (2 cut connections, 1 server error 503)``, or nothing."""
    if not faults:
        return ""
    n = len(faults)
    return f" after {n} resume{'s' if n > 1 else ''} ({describe_faults(faults)})"


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_target(release: Release, slot_path: Path, slot_size: int,
                  booted_slot_path: Path) -> None:
    if not release.has_root_image:
        raise ReleaseError(f"{release.version} has no root image (a container-only release): "
                           f"nothing to write into {slot_path}")
    if _same_file(slot_path, booted_slot_path):
        raise ReleaseError(f"refusing to write {slot_path}: it is the booted slot "
                           f"({os.path.realpath(booted_slot_path)})")
    if release.size > capacity(slot_size):
        raise ReleaseError(f"image {release.image} is {release.size} bytes, slot "
                           f"{slot_path} holds only {capacity(slot_size)} (its {slot_size} bytes "
                           f"less the {RECORD_SIZE}-byte slot identity); nothing was written")


def _load_resume(resume_file: Path, release: Release, slot: str) -> tuple[int, int]:
    """``(next_block, failures)`` from a resume file that matches this release and slot."""
    try:
        state = read_json(resume_file, {})
    except StateError:  # an unreadable resume file only costs a full download
        return 0, 0
    if not isinstance(state, dict):
        return 0, 0
    same = (state.get("sha256") == release.sha256 and state.get("slot") == slot
            and state.get("block_size") == release.block_size)
    block, failures = state.get("next_block"), state.get("failures", 0)
    if not same or not isinstance(block, int) or not 0 <= block <= len(release.blocks):
        return 0, 0
    return block, failures if isinstance(failures, int) else 0


def clear_resume(resume_file: Path) -> None:
    """Forget the resume point (the slot it was for is marked staged, or not to be trusted)."""
    _clear_resume(resume_file)


def _clear_resume(resume_file: Path) -> None:
    try:
        resume_file.unlink()
        fsync_dir(resume_file.parent)
    except FileNotFoundError:
        pass


def _shown(resp: httpx.Response) -> str:
    """The response's URL as a message may show it: credentials in it masked."""
    return redact(str(resp.url))


def _start_of(resp: httpx.Response, offset: int, release: Release) -> int:
    """The image offset the response body starts at; refuse a body of the wrong length."""
    if resp.status_code == 416:
        raise ChannelUnavailable(f"channel: {_shown(resp)} refused the range from byte {offset}",
                                 BACKOFF_BASE)
    if resp.status_code >= 500 or resp.status_code in _RETRIED_STATUS:
        raise _NetFault(f"http {resp.status_code}",
                        f"channel: {_shown(resp)} answered HTTP {resp.status_code}")
    if resp.status_code not in (200, 206):
        raise ChannelUnavailable(f"channel: {_shown(resp)} answered HTTP {resp.status_code}")
    if resp.headers.get("content-encoding", "identity") != "identity":
        raise ReleaseError(f"{_shown(resp)}: served with Content-Encoding "
                           f"{resp.headers['content-encoding']}; images are sent as they are")
    start = 0
    if resp.status_code == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
        if match is None or int(match.group(1)) != offset:
            raise ReleaseError(f"{_shown(resp)}: asked for bytes from {offset}, got "
                               f"Content-Range {resp.headers.get('content-range')!r}")
        start = offset
    length = resp.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) != release.size - start:
        longer = int(length) > release.size - start
        raise ReleaseError(
            f"{_shown(resp)}: image {'longer than' if longer else 'shorter than'} its declared "
            f"size: the server sends {length} bytes from offset {start}, the signed size "
            f"{release.size} leaves {release.size - start}; nothing of it was written")
    return start


def _verify_block(session: _Session, index: int, block: memoryview) -> None:
    release = session.release
    got = hashlib.sha256(block).hexdigest()
    if got != release.blocks[index]:
        start, end = release.block_range(index)
        raise ReleaseError(f"{release.image}: block {index} (bytes {start}-{end - 1}) hash "
                           f"mismatch: got {got[:16]}…, signed {release.blocks[index][:16]}…; "
                           "the block was not written")
    if index == 0 and bytes(block[:len(LEGACY_MAGIC)]) == LEGACY_MAGIC:
        raise ReleaseError(f"{release.image}: the image starts with an old-layout KruxOS image "
                           "header; this device installs plain filesystem images and keeps "
                           "the slot identity at the slot's end (publish the image without "
                           "the header); the block was not written")


def _write_block(session: _Session, index: int, block: memoryview) -> None:
    view, offset = block, session.release.block_range(index)[0]
    while view:
        n = os.pwrite(session.fd, view, offset)
        view, offset = view[n:], offset + n
    session.next_block = index + 1
    if session.due():
        session.save()
    failpoint("install.block-written")
    session.event("download")


_Item = tuple[int, memoryview, bytearray] | BaseException | None  # a block, a failure, the end


class _Receiver:
    """Assembles the response body into whole blocks on a thread of its own.

    The socket keeps being read while the writer hashes, writes and syncs.
    Blocks travel through a queue of at most ``QUEUE_BLOCKS``, in buffers taken
    from a fixed pool of ``QUEUE_BLOCKS + 2`` preallocated blocks (one being
    filled, one being written), so memory does not grow with the image. The
    receiver never writes: it only hands over bytes, and errors, in order.
    """

    def __init__(self, session: _Session, resp: httpx.Response, start: int) -> None:
        self.session, self.resp, self.start = session, resp, start
        size = session.release.block_size
        self.full: queue.Queue[_Item] = queue.Queue(maxsize=QUEUE_BLOCKS)
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(QUEUE_BLOCKS + 2):
            self.free.put(bytearray(size))
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kruxos-receive", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop receiving and wait for the thread (at most one network wait)."""
        self.halt.set()
        self.thread.join()

    def _run(self) -> None:
        try:
            self._receive()
        except BaseException as exc:  # noqa: BLE001 - handed to the writer, which raises it
            self._put(exc)

    def _put(self, item: _Item) -> bool:
        while not self.halt.is_set():
            try:
                self.full.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _buffer(self) -> bytearray | None:
        while not self.halt.is_set():
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _receive(self) -> None:
        session, release, resp = self.session, self.session.release, self.resp
        index = self.start // release.block_size  # a block boundary (the resume point or 0)
        first, end = release.block_range(index)
        need, filled, buf = end - first, 0, self._buffer()
        began = time.monotonic()
        for chunk in resp.iter_raw():
            if buf is None or self.halt.is_set():
                return
            session.fetched += len(chunk)
            if time.monotonic() - began > session.block_deadline:
                raise _NetFault("stall", f"{_shown(resp)}: block {index} took more than "
                                f"{session.block_deadline:.1f}s (slow retrieval)")
            view = memoryview(chunk)
            while view:
                if index >= len(release.blocks):
                    raise ReleaseError(f"{_shown(resp)}: image longer than its declared size "
                                       f"{release.size}; stopped reading at the declared length")
                n = min(len(view), need - filled)
                buf[filled:filled + n] = view[:n]
                filled, view = filled + n, view[n:]
                if filled < need:
                    continue
                if not self._put((index, memoryview(buf)[:need], buf)):
                    return
                index, filled = index + 1, 0
                if index < len(release.blocks):
                    start, end = release.block_range(index)
                    need, buf = end - start, self._buffer()
                    if buf is None:
                        return
                began = time.monotonic()
        if index < len(release.blocks):
            raise _NetFault("cut", f"{_shown(resp)}: the stream ended at byte "
                            f"{release.block_range(index)[0] + filled} of {release.size}")
        self._put(None)


def _stream_blocks(session: _Session, resp: httpx.Response, start: int,
                   should_stop: Callable[[], bool]) -> bool:
    """Verify and write the blocks the receiver hands over; ``False`` when asked to stop."""
    receiver = _Receiver(session, resp, start)
    try:
        return _write_received(session, receiver, should_stop)
    finally:
        receiver.close()


def _write_received(session: _Session, receiver: _Receiver,
                    should_stop: Callable[[], bool]) -> bool:
    last = len(session.release.blocks) - 1
    while True:
        item = receiver.full.get()
        if item is None:
            return True
        if isinstance(item, BaseException):
            raise item
        index, block, buf = item
        try:
            _verify_block(session, index, block)
            failpoint("install.block-fetched")
            _write_block(session, index, block)
        finally:
            block.release()
            receiver.free.put(buf)
        if index < last and should_stop():
            return False


def _read_back(session: _Session, slot_path: Path) -> None:
    """Read the slot from the device (not the page cache) and compare with the signature.

    One read pass: this thread reads each block and checks its signed block
    hash while a second thread feeds the same buffers to the whole-image
    SHA-256 (hashlib releases the GIL), so each byte is read once and each
    hash runs on its own core.
    """
    release = session.release
    os.fsync(session.fd)
    os.posix_fadvise(session.fd, 0, 0, os.POSIX_FADV_DONTNEED)
    whole = _WholeHasher(release.block_size)
    try:
        with io.FileIO(slot_path, "r") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(f.fileno(), 0, release.size, os.POSIX_FADV_SEQUENTIAL)
            for index, expected in enumerate(release.blocks):
                _check_read_block(session, f, index, expected, whole, slot_path)
    finally:
        digest = whole.finish()
    if digest != release.sha256:
        raise ReleaseError(f"read-back of {slot_path}: whole-image hash mismatch "
                           f"(got {digest[:16]}…, signed {release.sha256[:16]}…)")


def _check_read_block(session: _Session, f: io.FileIO, index: int, expected: str,
                      whole: _WholeHasher, slot_path: Path) -> None:
    start, end = session.release.block_range(index)
    buf = whole.buffer()
    view = memoryview(buf)[:end - start]
    got = f.readinto(view)
    if got != end - start or hashlib.sha256(view).hexdigest() != expected:
        whole.give_back(buf)
        raise ReleaseError(f"read-back of {slot_path}: block {index} differs from the "
                           "verified bytes written there")
    whole.add(buf, end - start)
    session.event("read-back", end)


class _WholeHasher:
    """The whole-image SHA-256 on a second thread, over a small pool of read buffers."""

    def __init__(self, block_size: int) -> None:
        self.digest = hashlib.sha256()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(READ_BACK_BUFFERS):
            self.free.put(bytearray(block_size))
        self.todo: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="kruxos-hash", daemon=True)
        self.thread.start()

    def buffer(self) -> bytearray:
        return self.free.get()

    def give_back(self, buf: bytearray) -> None:
        self.free.put(buf)

    def add(self, buf: bytearray, length: int) -> None:
        self.todo.put((buf, length))

    def finish(self) -> str:
        self.todo.put(None)
        self.thread.join()
        return self.digest.hexdigest()

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            buf, length = item
            with memoryview(buf) as view:
                self.digest.update(view[:length])
            self.free.put(buf)


def _download(session: _Session, client: httpx.Client, url: str,
              should_stop: Callable[[], bool]) -> bool:
    offset = session.release.block_range(session.next_block)[0]
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers) as resp:
        start = _start_of(resp, offset, session.release)
        if start < offset:  # the server ignored Range: take it all again
            session.next_block = session.saved_block = 0
        return _stream_blocks(session, resp, start, should_stop)


def _fetch_all(session: _Session, url: str, should_stop: Callable[[], bool],
               timeout: float, transport: httpx.BaseTransport | None, retry: Retry) -> bool:
    """Download what is missing, resuming after network faults as ``retry`` allows.

    ``False`` when asked to stop. Past the bound, the failure becomes a
    :class:`ChannelUnavailable` whose delay doubles with each failed call in a row.
    """
    began, in_a_row, rng = session.next_block, 0, random.Random(retry.seed)
    with httpx.Client(timeout=timeout, transport=transport, follow_redirects=True) as client:
        while True:
            before = session.next_block
            try:
                return _download(session, client, url, should_stop)
            except ReleaseError:
                session.save()
                raise
            except (httpx.HTTPError, ChannelUnavailable) as exc:
                in_a_row = 1 if session.next_block > before else in_a_row + 1
                kind = _fault_kind(exc)
                if (kind is None or in_a_row >= retry.attempts
                        or len(session.faults) >= retry.resumes):
                    raise _given_up(session, url, exc, kind, began) from exc
                session.save()  # the verified blocks are durable before any wait
                if _pause(retry.delay(in_a_row, rng), should_stop):
                    return False
                session.faults.append(kind)


def _given_up(session: _Session, url: str, exc: BaseException, kind: str | None,
              began: int) -> ChannelUnavailable:
    """The failure that ends the call; the next call resumes at the resume point."""
    session.failures = 1 if session.next_block > began else session.failures + 1
    session.save()
    delay = min(BACKOFF_BASE * 2 ** (session.failures - 1), BACKOFF_MAX)
    tried = ""
    if session.faults:
        faults = [*session.faults, kind or "other"]
        tried = f" after {len(faults)} failures in this call ({describe_faults(faults)})"
    return ChannelUnavailable(redact(f"channel: downloading {url} failed at block "
                                     f"{session.next_block} ({exc}){tried}; will resume there"),
                              delay)


def _pause(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Wait ``seconds`` before a resume; ``True`` as soon as a stop is asked for."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if should_stop():
            return True
        time.sleep(min(left, 0.1))
    return should_stop()


def _image_url(base_url: str, image: str) -> str:
    """Where the image named by the signed metadata is, under the channel's base URL."""
    try:
        return parse_channel_url(base_url).join(image)
    except UrlError as exc:
        raise ReleaseError(f"channel: cannot fetch the image: {exc}") from exc


def install(release: Release, base_url: str, slot_path: Path, slot_size: int, *,
            origin: Origin, booted_slot_path: Path, before_first_write: Callable[[], None],
            progress: Callable[[InstallProgress], None], should_stop: Callable[[], bool],
            resume_file: Path, timeout: float = 30.0, min_rate: int = MIN_RATE,
            transport: httpx.BaseTransport | None = None, retry: Retry = Retry(),
            resume_bytes: int = RESUME_BYTES,
            resume_seconds: float = RESUME_SECONDS) -> InstallResult:
    """Stream ``release`` from the channel at ``base_url`` into ``slot_path``.

    Returns a complete result only when the slot read back from the device
    matches the signed SHA-256 and the slot's identity names the release
    (as ``origin``'s metadata signed it); a stop request returns an incomplete
    result that the next call resumes. ``before_first_write`` runs before the
    slot is opened for writing (the caller marks the slot unbootable there);
    right after it the slot's old identity is destroyed. ``slot_size`` is the
    slot's capacity, its last 4 KiB kept for the identity. ``timeout`` bounds
    each network wait; a block must also arrive within ``timeout`` plus its
    size at ``min_rate`` bytes/s, so a trickling server cannot hold it forever.
    Network faults are ridden out as ``retry`` says; the resume point is made
    durable every ``resume_bytes`` (rounded up to whole blocks) or ``resume_seconds``, whichever
    comes first.
    """
    slot_path, booted_slot_path = Path(slot_path), Path(booted_slot_path)
    _check_target(release, slot_path, slot_size, booted_slot_path)
    slot = os.path.realpath(slot_path)
    next_block, failures = _load_resume(resume_file, release, slot)
    resumed_from = release.block_range(next_block)[0]
    if should_stop():
        return _stopped(release, next_block, resumed_from, 0)
    before_first_write()
    fd = _open_invalidated(slot_path)
    session = _Session(release, fd, resume_file, slot, progress, next_block, failures,
                       saved_block=next_block,
                       block_deadline=timeout + release.block_size / min_rate,
                       resume_bytes=resume_bytes, resume_seconds=resume_seconds,
                       saved_at=time.monotonic())
    try:
        if next_block < len(release.blocks):
            if not _fetch_all(session, _image_url(base_url, release.image),
                              should_stop, timeout, transport, retry):
                session.save()
                session.event("stopped")
                return _stopped(release, session.next_block, resumed_from, session.fetched,
                                tuple(session.faults))
            session.save()  # every block is on the device: a crash from here costs a read-back
        _finish(session, slot_path, origin)
    finally:
        os.close(fd)
    return InstallResult(release.version, True, len(release.blocks), len(release.blocks),
                         resumed_from, session.fetched,
                         f"{release.image}: {release.size} bytes written to {slot_path}, "
                         "read back from the device and verified"
                         f"{_resumed_note(resumed_from, release, session.fetched)}"
                         f"{_resumes_note(session.faults)}", tuple(session.faults))


def _resumed_note(resumed_from: int, release: Release, fetched: int) -> str:
    """What a resumed install saved, for the outcome a person reads (empty otherwise).

    ``resumed_from`` is the byte offset the install went on from."""
    if resumed_from == 0:
        return ""
    block = resumed_from // release.block_size
    return (f" (resumed at block {block} of {len(release.blocks)}, byte {resumed_from}; "
            f"{fetched} bytes fetched)")


def _open_invalidated(slot_path: Path) -> int:
    """Open the slot for writing with its identity already destroyed and synced."""
    try:
        fd = os.open(slot_path, os.O_RDWR)
    except OSError as exc:
        raise ReleaseError(f"cannot open slot {slot_path} ({exc.strerror})") from exc
    try:
        invalidate(fd)
    except OSError as exc:
        os.close(fd)
        raise ReleaseError(f"cannot clear the identity of slot {slot_path} "
                           f"({exc.strerror}); nothing was written") from exc
    except BaseException:
        os.close(fd)
        raise
    failpoint("install.invalidated")
    return fd


def _finish(session: _Session, slot_path: Path, origin: Origin) -> None:
    """Make every block durable and say so in the resume point, read back, then name the
    release in the slot: from the last block on, a kill before the caller marks the slot
    staged costs a read-back, not a download (the caller removes the resume point once
    the slot is marked: :func:`clear_resume`)."""
    session.save()
    try:
        _read_back(session, slot_path)
    except ReleaseError:
        _clear_resume(session.resume_file)  # what was written is not to be trusted
        raise
    failpoint("install.read-back")
    identity = SlotIdentity.of(session.release, origin, format_time(datetime.now(UTC)))
    try:
        write_identity(session.fd, identity)
    except OSError as exc:
        raise ReleaseError(f"cannot write the identity of slot {slot_path} "
                           f"({exc.strerror})") from exc
    failpoint("install.identity-written")
    session.event("done", session.release.size)


def _stopped(release: Release, next_block: int, resumed_from: int,
             fetched: int, faults: tuple[str, ...] = ()) -> InstallResult:
    return InstallResult(release.version, False, next_block, len(release.blocks),
                         resumed_from, fetched,
                         f"stopped at block {next_block} of {len(release.blocks)}"
                         f"{_resumes_note(faults)}; the next install resumes there", faults)
