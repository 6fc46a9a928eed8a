"""Staging benchmark: the product's installer against ``curl | tee | sha256sum``.

nginx (from Debian) serves a signed channel with one 512 MiB simulated image on
127.0.0.1. Alternating the two sides, each run is timed from the outside:

  (a) ``bench/stage_once.py`` in its own process: fetch and verify the signed
      metadata, then ``install`` (verify each block, write, fsync, read the slot
      back from the device and compare with the signed SHA-256);
  (b) ``bash -o pipefail -c 'curl -s URL | tee SLOT | sha256sum'``, exactly the
      baseline of the issue; ``sync SLOT`` (an fsync of that file) is timed
      right after it and reported as the variant "b+fsync".

Also measured: SHA-256 in memory, write+fsync and cold read of the disk, and
curl to /dev/null over loopback, so the ratio can be explained. A second
staging of a 2 GiB image shows whether peak RSS depends on the image size.
Every loop has a fixed count; nginx listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.release.channel import add_release, init_channel, sign_channel
from reconciler.release.keys import generate_keypair
from reconciler.sim.image import build_sim_image

MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent
STAGE_ONCE = REPO / "bench" / "stage_once.py"
TARGET_RATIO, TARGET_RSS_MIB = 0.9, 80.0
BIG_MIN_FREE = 6 << 30
BIG_RSS_SLACK_MIB = 2.0  # the signed hash list grows with the image (~100 bytes/MiB held)
NGINX_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def say(text: str = "") -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- workspace

def pick_base() -> Path:
    """A disk-backed place for the files: /var/tmp, or build/ if /var/tmp is tmpfs."""
    for base in (Path("/var/tmp"), REPO / "build"):
        base.mkdir(exist_ok=True)
        if fs_type(base) not in ("tmpfs", "ramfs"):
            return base
    raise SystemExit("bench: no disk-backed directory (/var/tmp and build/ are tmpfs)")


def fs_type(path: Path) -> str:
    """The file-system type of the mount holding ``path`` (longest mount-point match)."""
    real, best, kind = os.path.realpath(path), "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return kind


def sparse_file(path: Path, size: int) -> None:
    """A fresh slot file of ``size`` bytes, no blocks allocated (as tee's O_TRUNC)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def evict(path: Path) -> None:
    """Flush and drop one file's pages, so no run inherits another's dirty cache."""
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path: Path) -> None:
    """Read a file once so nginx serves it from memory (it plays the network)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(MIB)
        while f.readinto(buf):
            pass


def drop_caches(enabled: bool) -> str:
    """Drop the global page cache when asked (root only); say what happened."""
    if not enabled:
        return "not dropped (shared machine; pass --drop-caches to drop it, root only)"
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "dropped before every run (/proc/sys/vm/drop_caches = 1)"
    except OSError as exc:
        return f"could NOT be dropped ({exc.strerror}); runs may see a warm cache"


# ---------------------------------------------------------------- channel

@dataclass
class Channel:
    """A signed channel on disk and the key a device would trust."""

    root: Path
    key: Path
    pub: Path
    images: dict[str, Path] = field(default_factory=dict)


def make_channel(work: Path) -> Channel:
    key, pub = generate_keypair(work / "keys", "bench")
    root = work / "channel"
    root.mkdir()
    init_channel(root, "bench")
    return Channel(root, key, pub)


def publish(chan: Channel, version: str, size: int) -> Path:
    """Build a simulated image, add it and sign the channel; return the served file."""
    src = build_sim_image(chan.root.parent / f"src-{version}.img", version, size=size)
    release = add_release(chan.root, src, version, [f"benchmark image, {size // MIB} MiB"])
    src.unlink()
    sign_channel(chan.root, [chan.key])
    chan.images[version] = chan.root / release.image
    return chan.images[version]


# ---------------------------------------------------------------- nginx

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(work: Path, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """nginx in the foreground with its own config; return it and the channel URL."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix, port = work / "nginx", free_port()
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=root))
    for path in (work, root):  # nginx workers run as nobody when started by root
        path.chmod(0o755)
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-e", str(prefix / "error.log"),
                             "-c", str(conf), "-g", "daemon off;"])
    for _ in range(100):
        if proc.poll() is not None:
            raise SystemExit(f"bench: nginx exited ({proc.returncode}); "
                             f"see {prefix / 'error.log'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise SystemExit("bench: nginx did not listen within 10 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- the two sides

@dataclass
class Staging:
    """One run of (a): wall time, peak RSS and the installer's own phase times."""

    seconds: float
    rss_mib: float
    phases: dict[str, float]
    rss_metadata_mib: float


def run_a(python: str, url: str, chan: Channel, version: str, slot: Path, booted: Path,
          work: Path, profile: Path | None = None) -> Staging:
    """Stage ``version`` in a child process; it reports its own peak RSS (VmHWM)."""
    resume, out = work / "resume.json", work / "stage_once.out"
    resume.unlink(missing_ok=True)
    args = [python, str(STAGE_ONCE), url, str(chan.pub), version, str(slot), str(booted),
            str(resume)] + (["--profile", str(profile)] if profile else [])
    with open(out, "wb") as f:
        began = time.perf_counter()
        proc = subprocess.Popen(args, stdout=f, cwd=REPO)
        _, status, _ = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench: staging failed (exit {proc.returncode})")
    phases = json.loads(out.read_text().splitlines()[-1])
    rss = float(phases.pop("peak_rss_mib"))
    return Staging(seconds, rss, phases, float(phases.pop("rss_after_metadata_mib")))


BASELINE = 'curl -s "$1" | tee "$2" | sha256sum'
# Reference only (not the target): the same pipe with OpenSSL's SHA-256, which
# uses the CPU's SHA instructions like the product's hashlib; coreutils' does not.
REFERENCE = 'curl -s "$1" | tee "$2" | openssl dgst -sha256 -r'


def run_pipe(script: str, url: str, slot: Path, expected: str) -> tuple[float, float]:
    """A shell pipe as given, then ``sync SLOT`` (fsync of that file); both times."""
    began = time.perf_counter()
    done = subprocess.run(["bash", "-o", "pipefail", "-c", script, "bash", url, str(slot)],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0 or done.stdout.split()[0] != expected:
        raise SystemExit(f"bench: {script!r} failed ({done.returncode}): "
                         f"{done.stdout}{done.stderr}")
    began = time.perf_counter()
    subprocess.run(["sync", str(slot)], check=True)
    return seconds, time.perf_counter() - began


# ---------------------------------------------------------------- machine speeds

def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def sha_speed(size: int = 256 * MIB) -> float:
    data = memoryview(os.urandom(size))

    def run() -> None:
        h = hashlib.sha256()
        for off in range(0, size, MIB):
            h.update(data[off:off + MIB])
    return size / timed(run)


def write_fsync_speed(path: Path, size: int = 512 * MIB) -> float:
    chunk = os.urandom(MIB)

    def run() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(size // MIB):
                os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
    return size / timed(run)


def cold_read_speed(path: Path) -> float:
    evict(path)
    size = path.stat().st_size
    return size / timed(lambda: warm(path))


def tool_speed(argv: list[str], path: Path) -> float:
    """A hashing command over a file in the page cache."""
    warm(path)
    return path.stat().st_size / timed(lambda: subprocess.run(
        [*argv, str(path)], check=True, stdout=subprocess.DEVNULL))


def loopback_speed(url: str, size: int) -> float:
    return size / timed(lambda: subprocess.run(["curl", "-s", "-o", "/dev/null", url],
                                               check=True))


# ---------------------------------------------------------------- report

def mbs(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:7.1f} MB/s"


def summary(name: str, times: list[float], size: int) -> float:
    med = statistics.median(times)
    say(f"  {name:<10} median {med:6.2f} s ({mbs(size, med)})   "
        f"min {min(times):6.2f} s ({mbs(size, min(times))})   "
        f"max {max(times):6.2f} s ({mbs(size, max(times))})   n={len(times)}")
    return med


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(size: int, a: list[Staging], pipes: dict[str, list[tuple[float, float]]]) -> None:
    say(f"\nResults ({size // MIB} MiB image; MB = 10^6 bytes; wall time of each run):")
    med_a = summary("(a) stage", [s.seconds for s in a], size)
    med: dict[str, float] = {}
    for name, runs in pipes.items():
        med[name] = summary(f"({name})", [t for t, _ in runs], size)
        med[f"{name}+fsync"] = summary(f"({name})+fsync", [t + f for t, f in runs], size)
    phases = ("metadata_s", "download_verify_write_s", "fsync_s", "read_back_s")
    say("  (a) phases, median of runs: " + ", ".join(
        f"{p[:-2]} {statistics.median(s.phases[p] for s in a):.2f} s" for p in phases))
    startup = statistics.median(s.seconds - s.phases["metadata_s"] - s.phases["install_s"]
                                for s in a)
    say(f"  (a) python start-up + imports (wall - metadata - install), median: {startup:.2f} s")
    ratio = med["b"] / med_a
    say("\n  Ratios are throughput ratios: median time(other) / median time(a); > 1 = (a) faster.")
    say(f"  a/b         = {ratio:.2f}   target >= {TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)}")
    say(f"  a/(b+fsync) = {med['b+fsync'] / med_a:.2f}   (fsync included on both sides)")
    if "c" in pipes:
        say(f"  a/c         = {med['c'] / med_a:.2f}   a/(c+fsync) = {med['c+fsync'] / med_a:.2f}"
            "   (reference pipe with a SHA-NI hash; not the target)")
    rss = [s.rss_mib for s in a]
    say(f"  peak RSS of the staging process: max {max(rss):.1f} MiB, median "
        f"{statistics.median(rss):.1f} MiB   target <= {TARGET_RSS_MIB:.0f} MiB: "
        f"{verdict(max(rss) <= TARGET_RSS_MIB)}")


def print_profile(path: Path, top: int = 18) -> None:
    import pstats
    say(f"\ncProfile of one extra staging (not timed above), top {top} by own time:")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)


# ---------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="staging benchmark (make bench)")
    p.add_argument("--runs", type=int, default=5, help="runs per side (at least 5 counts)")
    p.add_argument("--size-mib", type=int, default=512, help="image size for the timed runs")
    p.add_argument("--big-mib", type=int, default=2048, help="image size for the RSS check")
    p.add_argument("--no-big", action="store_true", help="skip the 2 GiB RSS check")
    p.add_argument("--drop-caches", action="store_true",
                   help="also drop the global page cache before each run (root)")
    p.add_argument("--profile", action="store_true",
                   help="run one extra staging under cProfile and print the top functions")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    return p.parse_args()


def machine(work: Path, url: str, image: Path) -> None:
    say("\nMachine:")
    say(f"  SHA-256 (hashlib, 256 MiB in memory, 1 MiB updates): {sha_speed() / 1e6:7.1f} MB/s")
    probe = work / "write-probe"
    say(f"  write + fsync (512 MiB, 1 MiB writes):               "
        f"{write_fsync_speed(probe) / 1e6:7.1f} MB/s")
    say(f"  cold read (512 MiB, after fadvise DONTNEED):          "
        f"{cold_read_speed(probe) / 1e6:7.1f} MB/s")
    probe.unlink()
    say(f"  sha256sum (coreutils, file in page cache):            "
        f"{tool_speed(['sha256sum'], image) / 1e6:7.1f} MB/s")
    if shutil.which("openssl"):
        say(f"  openssl dgst -sha256 (file in page cache):            "
            f"{tool_speed(['openssl', 'dgst', '-sha256'], image) / 1e6:7.1f} MB/s")
    warm(image)
    say(f"  curl -s URL -o /dev/null (nginx, loopback, warm):     "
        f"{loopback_speed(url, image.stat().st_size) / 1e6:7.1f} MB/s")


def timed_runs(args: argparse.Namespace, work: Path, url: str, chan: Channel,
               image: Path) -> list[Staging]:
    size = image.stat().st_size
    slot_a, slot_b, booted = work / "slot-a", work / "slot-b", work / "slot-booted"
    sparse_file(booted, MIB)
    expected = hashlib.sha256()
    with open(image, "rb") as f:
        while chunk := f.read(MIB):
            expected.update(chunk)
    cache = drop_caches(False)
    image_url = f"{url}/{image.name}"
    say(f"\nRuns: {args.runs} per side, alternating a b c a b c ...; slot (a) is a fresh sparse "
        f"file of {2 * size // MIB} MiB, slot (b) a plain file tee truncates.")
    say("  Before each run the slot files are fsynced and evicted (posix_fadvise DONTNEED) "
        "and the image is kept in nginx's page cache.")
    scripts = {"b": BASELINE}
    if shutil.which("openssl"):
        scripts["c"] = REFERENCE
    say(f"  (b) = {BASELINE}")
    say(f"  (c) = {REFERENCE}" if "c" in scripts else "  (c) skipped: no openssl")
    a: list[Staging] = []
    pipes: dict[str, list[tuple[float, float]]] = {name: [] for name in scripts}
    for i in range(args.runs):
        for side in ("a", *scripts):
            evict(slot_a)
            evict(slot_b)
            warm(image)
            cache = drop_caches(args.drop_caches)
            if side == "a":
                sparse_file(slot_a, 2 * size)
                a.append(run_a(sys.executable, url, chan, "2.0.0", slot_a, booted, work))
                s = a[-1]
                say(f"  run {i + 1} (a) {s.seconds:6.2f} s  {mbs(size, s.seconds)}  "
                    f"RSS {s.rss_mib:5.1f} MiB  " + " ".join(
                        f"{k[:-2]}={v:.2f}" for k, v in s.phases.items() if k.endswith("_s")))
            else:
                t, ts = run_pipe(scripts[side], image_url, slot_b, expected.hexdigest())
                pipes[side].append((t, ts))
                say(f"  run {i + 1} ({side}) {t:6.2f} s  {mbs(size, t)}  then sync {ts:5.2f} s")
    say(f"  page cache (global): {cache}")
    report(size, a, pipes)
    if args.profile:
        prof = work / "stage.prof"
        sparse_file(slot_a, 2 * size)
        run_a(sys.executable, url, chan, "2.0.0", slot_a, booted, work, profile=prof)
        print_profile(prof)
    slot_a.unlink()
    slot_b.unlink()
    return a


def big_run(args: argparse.Namespace, work: Path, url: str, chan: Channel,
            small: list[Staging]) -> None:
    size = args.big_mib * MIB
    free = shutil.disk_usage(work).free
    say(f"\nRSS with a {args.big_mib} MiB image (one run):")
    if args.no_big:
        say("  skipped (--no-big)")
        return
    if free < BIG_MIN_FREE:
        say(f"  SKIPPED: only {free / (1 << 30):.1f} GiB free in {work}, "
            f"the check needs {BIG_MIN_FREE >> 30} GiB")
        return
    image = publish(chan, "2.1.0", size)
    slot, booted = work / "slot-big", work / "slot-booted"
    sparse_file(slot, 2 * size)
    warm(image)
    s = run_a(sys.executable, url, chan, "2.1.0", slot, booted, work)
    small_rss = max(x.rss_mib for x in small)
    say(f"  staged in {s.seconds:.2f} s ({mbs(size, s.seconds)}), peak RSS {s.rss_mib:.1f} MiB "
        f"vs {small_rss:.1f} MiB for {args.size_mib} MiB "
        f"(difference {s.rss_mib - small_rss:+.1f} MiB)")
    small_meta = max(x.rss_metadata_mib for x in small)
    say(f"  RSS once the signed metadata is parsed, before the first block: "
        f"{s.rss_metadata_mib:.1f} MiB vs {small_meta:.1f} MiB "
        f"(difference {s.rss_metadata_mib - small_meta:+.1f} MiB: the longer hash list)")
    say(f"  no larger than with the small image (allowing {BIG_RSS_SLACK_MIB:.0f} MiB for the "
        f"longer signed hash list): {verdict(s.rss_mib <= small_rss + BIG_RSS_SLACK_MIB)}")
    slot.unlink()
    image.unlink()


def main() -> None:
    args = parse_args()
    base = pick_base()
    work = Path(tempfile.mkdtemp(prefix="kruxos-bench-", dir=base))
    say(f"kruxos staging benchmark; work dir {work} ({fs_type(work)}), "
        f"{shutil.disk_usage(work).free / (1 << 30):.1f} GiB free, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}")
    nginx = None
    try:
        chan = make_channel(work)
        image = publish(chan, "2.0.0", args.size_mib * MIB)
        nginx, url = start_nginx(work, chan.root)
        say(f"nginx {url} serving {chan.root} ({image.name}, {args.size_mib} MiB, signed)")
        machine(work, url + "/" + image.name, image)
        small = timed_runs(args, work, url, chan, image)
        big_run(args, work, url, chan, small)
    finally:
        if nginx is not None:
            stop(nginx)
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
