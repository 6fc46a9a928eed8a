"""A real HTTP server process on 127.0.0.1 that serves a channel directory, with faults.

Run as ``python tests/httpserver.py ROOT``: it binds a free port, prints
``PORT <n>`` and serves ``ROOT`` with ``Range`` support until killed. Tests
drive it through :class:`ChannelServer`, which starts the process and talks to
two control endpoints:

``POST /_faults``  a JSON object of faults for files whose path ends with
                   ``match`` (default ``.img``); an empty object clears them.
``GET /_log``      every request served so far: path, Range header, status,
                   first byte offset, bytes sent, and whether a fault fired.

Faults (offsets are offsets in the file, not in the response)::

    cut_at: N        close the connection abruptly after byte N (``cut_times`` times, default 1)
    tamper_at: N     flip the bits of the byte at offset N
    ignore_range     answer 200 with the whole file even when a Range was asked for
    endless          no Content-Length; after the file, send pseudo-random bytes forever
    extra: N         append N bytes and count them in Content-Length
    stall_at: N      stop sending at offset N and hold the connection for ``stall_seconds``
    trickle_at: N    from offset N on, send 100 bytes every 0.05 s (slow retrieval)
    require_auth: V  every file needs the header ``Authorization: V``, else 401 (any path;
                     the log notes whether each request carried it)
    plan: [F, ...]   one fault per request, in order, then none: each F is ``{}`` (serve
                     faithfully), ``{"status": 503}`` (answer that status, no file bytes),
                     ``{"cut_after": N}`` or ``{"stall_after": N, "stall_seconds": S}``
                     (N bytes into this response); :func:`fault_plan` draws one from a seed
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _State:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults: dict[str, Any] = {}
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    state: _State

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length", "0"))
        faults = json.loads(self.rfile.read(length) or b"{}")
        with self.state.lock:
            self.state.faults = faults
        self._reply(200, b"ok\n")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path == "/_log":
            with self.state.lock:
                body = json.dumps(self.state.log).encode()
            self._reply(200, body)
            return
        with self.state.lock:
            wanted = self.state.faults.get("require_auth")
            if wanted is not None:
                self.state.log.append({"path": self.path, "authorized":
                                       self.headers.get("Authorization") == wanted})
        if wanted is not None and self.headers.get("Authorization") != wanted:
            self._reply(401, b"unauthorized\n")
            return
        path = (self.state.root / self.path.lstrip("/").split("?")[0]).resolve()
        if not path.is_file() or self.state.root not in path.parents:
            self._reply(404, b"not found\n")
            return
        self._serve_file(path)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _faults_for(self) -> dict[str, Any]:
        with self.state.lock:
            faults = dict(self.state.faults)
            if not self.path.endswith(faults.get("match", ".img")):
                return {}
            plan = self.state.faults.get("plan")
            if plan:
                faults.update(plan.pop(0))
            if "cut_at" in faults:
                left = self.state.faults.get("cut_times", 1)
                if left <= 0:
                    faults.pop("cut_at")
                else:
                    self.state.faults["cut_times"] = left - 1
            return faults

    def _serve_file(self, path: Path) -> None:
        data = path.read_bytes()
        faults = self._faults_for()
        if "tamper_at" in faults:
            at = faults["tamper_at"]
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
        data += b"\xa5" * faults.get("extra", 0)
        asked = self.headers.get("Range")
        if "status" in faults:
            with self.state.lock:
                self.state.log.append({"path": self.path, "range": asked,
                                       "status": faults["status"], "start": 0, "sent": 0,
                                       "fault": f"status {faults['status']}"})
            self._reply(faults["status"], b"server error\n")
            return
        match = _RANGE.match(asked or "")
        start, status = 0, 200
        if match and not faults.get("ignore_range"):
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else len(data)
            if start >= len(data):
                self._reply(416, b"range not satisfiable\n")
                return
            status = 206
            data = data[:end]
        for relative, absolute in (("cut_after", "cut_at"), ("stall_after", "stall_at")):
            if relative in faults:
                faults[absolute] = start + faults[relative]
        entry = {"path": self.path, "range": asked, "status": status, "start": start,
                 "sent": 0, "fault": ""}
        with self.state.lock:
            self.state.log.append(entry)
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if not faults.get("endless"):
            self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        try:
            self._send_body(data, start, faults, entry)
        except (BrokenPipeError, ConnectionResetError):
            entry["fault"] = entry["fault"] or "client went away"

    def _send_body(self, data: bytes, pos: int, faults: dict[str, Any],
                   entry: dict[str, Any]) -> None:
        stop_at = min([faults[k] for k in ("cut_at", "stall_at") if k in faults] or [len(data)])
        while pos < len(data):
            if pos >= stop_at:
                self._fault_at(pos, faults, entry)
                return
            n = min(CHUNK, len(data) - pos, max(stop_at - pos, 1))
            if pos >= faults.get("trickle_at", len(data)):
                n = min(n, 100)
                time.sleep(0.05)
            elif "trickle_at" in faults:
                n = min(n, faults["trickle_at"] - pos)
            self.wfile.write(data[pos:pos + n])
            pos += n
            entry["sent"] += n
        if faults.get("endless"):
            entry["fault"] = "endless"
            filler = os.urandom(CHUNK)
            for _ in range(16 * 1024):  # 1 GiB at most, the client stops long before
                self.wfile.write(filler)
                entry["sent"] += CHUNK

    def _fault_at(self, pos: int, faults: dict[str, Any], entry: dict[str, Any]) -> None:
        self.wfile.flush()
        if "cut_at" in faults and pos >= faults["cut_at"]:
            entry["fault"] = f"cut at {pos}"
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        entry["fault"] = f"stalled at {pos}"
        time.sleep(faults.get("stall_seconds", 30))
        self.close_connection = True


def fault_plan(seed: int, faults: int, most: int, stall_seconds: float = 30.0,
               kinds: tuple[str, ...] = ("cut", "status", "stall")) -> list[dict[str, Any]]:
    """``faults`` faults drawn from ``seed`` (the same seed, the same plan), one per request.

    A cut or a stall falls 1 to ``most`` bytes into its response; a status is a 503.
    """
    rng = random.Random(seed)
    plan: list[dict[str, Any]] = []
    for _ in range(faults):
        kind = rng.choice(kinds)
        if kind == "status":
            plan.append({"status": 503})
        elif kind == "cut":
            plan.append({"cut_after": rng.randint(1, most)})
        else:
            plan.append({"stall_after": rng.randint(1, most), "stall_seconds": stall_seconds})
    return plan


def serve(root: Path) -> None:
    """Serve ``root`` on a free loopback port; print the port first."""
    state = _State(root.resolve())
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


class ChannelServer:
    """The server process, started for one test and stopped after it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc = subprocess.Popen([sys.executable, __file__, str(root)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if line[:1] != ["PORT"]:
            self.stop()
            raise RuntimeError(f"test HTTP server did not start: {line}")
        self.url = f"http://127.0.0.1:{line[1]}"

    def _call(self, method: str, path: str, body: bytes = b"") -> bytes:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", int(self.url.rsplit(":", 1)[1]), timeout=5)
        try:
            conn.request(method, path, body=body or None)
            return conn.getresponse().read()
        finally:
            conn.close()

    def set_faults(self, **faults: Any) -> None:
        """Replace the active faults (no arguments: serve faithfully)."""
        self._call("POST", "/_faults", json.dumps(faults).encode())

    def requests(self) -> list[dict[str, Any]]:
        """Every request served so far, oldest first."""
        return list(json.loads(self._call("GET", "/_log")))

    def stop(self) -> None:
        """End the server process (it is ours; we know its pid)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
