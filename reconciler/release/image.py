"""The image header: a release's identity, inside its own bytes.

Every KruxOS image starts with a 4 KiB header in the spirit of ``os-release``::

    KRUXOS-IMAGE 1\\n
    VERSION=1.0.1\\n
    NAME=KruxOS\\n
    BEHAVIOUR=healthy\\n          (simulated images only)
    \\0 ... padding to 4096 bytes

Because the header is part of the signed image, reading it back from a slot
tells which release the slot holds even when every state file is lost; a slot
whose first bytes are not a header is empty (or was never finished).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reconciler.errors import ReleaseError

HEADER_SIZE = 4096
MAGIC = b"KRUXOS-IMAGE 1\n"


@dataclass(frozen=True)
class ImageHeader:
    """The fields of an image header; ``extra`` keeps fields this version does not know."""

    version: str
    name: str = "KruxOS"
    extra: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str = "") -> str:
        """A field by its header name (``VERSION``, ``BEHAVIOUR``...)."""
        return {"VERSION": self.version, "NAME": self.name, **self.extra}.get(key, default)


def encode_header(header: ImageHeader) -> bytes:
    """The 4096 header bytes for ``header``."""
    fields = {"VERSION": header.version, "NAME": header.name, **header.extra}
    lines = []
    for key, value in fields.items():
        if "\n" in value or "=" in key or "\0" in value:
            raise ReleaseError(f"image header: field {key!r} cannot hold {value!r}")
        lines.append(f"{key}={value}\n")
    body = MAGIC + "".join(lines).encode("utf-8")
    if len(body) > HEADER_SIZE:
        raise ReleaseError(f"image header: {len(body)} bytes, the limit is {HEADER_SIZE}")
    return body + b"\0" * (HEADER_SIZE - len(body))


def decode_header(raw: bytes) -> ImageHeader | None:
    """Parse header bytes; ``None`` when they are not a header (an empty slot)."""
    if not raw.startswith(MAGIC):
        return None
    text = raw[len(MAGIC):HEADER_SIZE].split(b"\0", 1)[0].decode("utf-8", "replace")
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    version = fields.pop("VERSION", "")
    if not version:
        return None
    name = fields.pop("NAME", "KruxOS")
    return ImageHeader(version=version, name=name, extra=fields)


def read_slot_header(path: Path) -> ImageHeader | None:
    """The header at the start of a slot device or file; ``None`` for an empty slot."""
    try:
        with open(path, "rb") as f:
            return decode_header(f.read(HEADER_SIZE))
    except FileNotFoundError:
        return None


def slot_identity(path: Path) -> tuple[ImageHeader | None, str | None]:
    """The slot's header, and what is wrong with its first bytes when they are not one.

    All zeros (or no file) is an empty slot, no problem. Bytes that start like
    a KruxOS header but do not parse, or bytes of something else, are named so
    the reconciler can say why it does not trust the slot's identity.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except FileNotFoundError:
        return None, None
    header = decode_header(raw)
    if header is not None or not raw.strip(b"\0"):
        return header, None
    if raw.startswith(MAGIC[:12]):
        return None, "its header starts like a KruxOS image header but cannot be read"
    return None, "its first bytes are not a KruxOS image header (a foreign or damaged slot)"
