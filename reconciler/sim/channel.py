"""A channel served like a plain web server: files, ``Range`` requests, a rate cap.

The simulated device (:mod:`reconciler.sim.run`) serves its channel with this
handler, and so does the QEMU device (``deploy/image/``): its channel sits on
a read-only disk and ``kruxos-channel.service`` serves it on loopback with
``python3 -m reconciler.sim.channel --dir /channel --port 8080``, so the
installer's resume by ``Range`` is the same code path as over a network.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["ChannelHandler", "channel_server", "main"]

log = logging.getLogger("reconciler.sim.channel")


class ChannelHandler(SimpleHTTPRequestHandler):
    """Serves the channel like a plain web server: files, ``Range`` requests, a rate cap.

    ``rate`` (bytes per second, 0 = unlimited) simulates a slow link so a
    download can be watched, interrupted and resumed.
    """

    rate = 0
    #: The ``Authorization`` value every request must carry (``None``: an open channel).
    authorization: str | None = None
    #: Where each response is logged (one JSON line: path, start, bytes).
    served_log: Path | None = None

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_head(self) -> Any:
        if self.authorization is not None and \
                self.headers.get("Authorization") != self.authorization:
            self.send_error(401, "Unauthorized")
            return None
        match = re.match(r"^bytes=(\d+)-$", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        size, start = path.stat().st_size, int(match.group(1))
        if start >= size:
            self.send_error(416, "Range Not Satisfiable")
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return f

    def copyfile(self, source: Any, outputfile: Any) -> None:
        start, sent = source.tell(), 0
        chunk = max(1024, self.rate // 20) if self.rate else 64 * 1024
        try:
            while data := source.read(chunk):
                outputfile.write(data)
                sent += len(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        finally:
            self._log_served(start, sent)

    def _log_served(self, start: int, sent: int) -> None:
        if self.served_log is None:
            return
        line = json.dumps({"path": self.path, "start": start, "bytes": sent}) + "\n"
        with open(self.served_log, "a") as log_file:
            log_file.write(line)


def channel_server(directory: Path, host: str, port: int, *, rate: int = 0,
                   authorization: str | None = None,
                   served_log: Path | None = None) -> ThreadingHTTPServer:
    """A server (not yet serving) for the channel in ``directory``; port 0 picks one."""
    handler_class = type("ConfiguredChannelHandler", (ChannelHandler,),
                         {"rate": rate, "authorization": authorization,
                          "served_log": served_log})
    handler = functools.partial(handler_class, directory=str(directory))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    """Serve ``--dir`` until SIGTERM or SIGINT; 0 then."""
    parser = argparse.ArgumentParser(prog="python -m reconciler.sim.channel",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="the channel's directory")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="channel: %(levelname)s %(message)s")
    if not args.dir.is_dir():
        log.error("no channel directory at %s", args.dir)
        return 1
    server = channel_server(args.dir, args.host, args.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving %s on %s:%d", args.dir, args.host, server.server_address[1])
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
