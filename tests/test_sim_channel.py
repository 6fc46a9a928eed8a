"""The channel server of the simulated device and of the QEMU device: files and Range resumes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.sim.channel import channel_server
from tests.waiting import wait_for


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / "image.img").write_bytes(bytes(range(256)) * 64)
    log = tmp_path / "served.jsonl"
    server = channel_server(channel, "127.0.0.1", 0, served_log=log)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


def test_a_range_request_resumes_from_its_first_byte(served: tuple[str, Path]) -> None:
    url, log = served
    whole = httpx.get(f"{url}/image.img", timeout=5)
    assert whole.status_code == 200 and len(whole.content) == 16384
    part = httpx.get(f"{url}/image.img", headers={"Range": "bytes=16000-"}, timeout=5)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == "bytes 16000-16383/16384"
    assert part.content == whole.content[16000:]
    # the server logs a response once it has sent it: after the client may have read it
    wait_for(lambda: '"start": 16000, "bytes": 384' in log.read_text(), 10,
             "the resumed response in the served log", context=log.read_text)


def test_a_range_past_the_end_is_not_satisfiable(served: tuple[str, Path]) -> None:
    url, _ = served
    answer = httpx.get(f"{url}/image.img", headers={"Range": "bytes=16384-"}, timeout=5)
    assert answer.status_code == 416
