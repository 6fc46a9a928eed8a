"""The U-Boot environment, as ``fw_printenv``/``fw_setenv`` read and write it via ``fw_env.config``.

``fw_env.config`` has one line per copy, ``PATH OFFSET SIZE`` (more columns,
the MTD sector size and count, are ignored; ``#`` starts a comment). One line
is a single copy, two lines a redundant pair. Each copy is::

    u32 CRC32 (little-endian) | u8 flag (redundant only) | name=value\\0 ... \\0 | padding

The CRC is ``zlib.crc32`` over everything after the header, padding included.

Reading, as libubootenv and U-Boot itself do: a copy with a bad CRC is
ignored; of two valid copies the one with the newer flag wins, where 0 is
newer than 255 (the counter wrapped) and otherwise the larger flag is newer;
equal flags pick the first copy. A file that is missing or blank (all 0x00 or
all 0xFF, as an erased flash or a fresh ``truncate``) is an empty environment.
A copy holding anything else with a bad CRC is corrupt: when no copy is valid,
:class:`BootEnvError` is raised and nothing is written over it.

Writing:

- **redundant**: the *other* copy is written with flag + 1 (255 wraps to 0)
  and fsynced. The copy being read stays untouched, so a power cut in the
  middle leaves the previous environment valid: the half-written copy fails
  its CRC and is ignored. This is the safe choice for a product.
- **single, a file of its own** (offset 0, the file no longer than the copy):
  written to a temporary file and renamed over it, so old or new, never half.
- **single, inside a shared file or a block device**: a rename is impossible,
  so the copy is overwritten in place and fsynced. A power cut during those
  few milliseconds leaves a bad CRC: U-Boot then boots with its built-in
  default environment and our variables are gone (the device boots slot A).
  Use a redundant pair where that matters.

Names are written sorted (as libubootenv and U-Boot's ``env export`` do), so
the same variables give the same bytes whoever wrote them. Setting a variable
to the empty string removes it: in U-Boot an empty variable does not exist.
NOR flash MTD devices use a different (boolean) flag scheme and need erasing
before writing; they are refused for writing (use ``fw_setenv`` there).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from reconciler.durable import atomic_write, fsync_dir, read_at_most
from reconciler.errors import BootEnvError
from reconciler.failpoints import failpoint

PAD = b"\xff"
_TEXT = ("utf-8", "surrogateescape")
_BLANK = (0x00, 0xFF)
#: The largest env copy accepted, far above any board's ``CONFIG_ENV_SIZE``: a
#: copy is read, encoded and written whole, so its size is memory.
MAX_ENV_SIZE = 16 << 20
#: The largest ``fw_env.config`` read (a real one is a few lines).
MAX_CONFIG_BYTES = 64 << 10
#: What ``strtoul(..., 0)`` reads in full: hex, octal (leading 0) or decimal.
_NUMBER = re.compile(r"^(?:0[xX][0-9a-fA-F]{1,16}|0[0-7]{0,22}|[1-9][0-9]{0,19})$")

__all__ = ["EnvCopy", "read_config", "encode", "decode", "newer", "read_env", "write_env",
           "edit", "config_text"]


@dataclass(frozen=True)
class EnvCopy:
    """One copy of the environment: a byte range of a file or device."""

    path: Path
    offset: int
    size: int


# -- fw_env.config -------------------------------------------------------------------


def read_config(config: Path) -> tuple[EnvCopy, ...]:
    """The one or two copies ``config`` describes.

    Relative paths are taken from the config's directory (``fw_printenv``
    takes them from its working directory: write absolute paths for both).
    """
    copies = tuple(_config_line(config, n, line) for n, line in _lines(_config_text(config)))
    if len(copies) not in (1, 2):
        raise BootEnvError(f"uboot backend: {config}: {len(copies)} env copies, expected 1 or 2")
    if len(copies) == 2 and copies[0].size != copies[1].size:
        raise BootEnvError(f"uboot backend: {config}: the two copies differ in size")
    return copies


def _config_text(config: Path) -> str:
    """The config's text: at most :data:`MAX_CONFIG_BYTES`, UTF-8."""
    try:
        raw, too_large = read_at_most(config, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise BootEnvError(f"uboot backend: {config}: {exc.strerror or exc}") from exc
    if too_large:
        raise BootEnvError(f"uboot backend: {config}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BootEnvError(f"uboot backend: {config}: not UTF-8 text (byte {exc.start})") from exc


def config_text(copies: Sequence[EnvCopy]) -> str:
    """The ``fw_env.config`` lines describing ``copies``."""
    return "".join(f"{c.path} {c.offset:#x} {c.size:#x}\n" for c in copies)


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            yield number, line


def _config_line(config: Path, number: int, line: str) -> EnvCopy:
    fields = line.split()
    if len(fields) < 3:
        raise BootEnvError(f"uboot backend: {config}:{number}: expected 'PATH OFFSET SIZE'")
    try:
        offset, size = _number(fields[1]), _number(fields[2])
    except ValueError as exc:
        raise BootEnvError(f"uboot backend: {config}:{number}: {exc}") from None
    if not 8 < size <= MAX_ENV_SIZE:
        raise BootEnvError(f"uboot backend: {config}:{number}: size {size} is not "
                           f"9 to {MAX_ENV_SIZE} bytes")
    return EnvCopy(config.parent / fields[0], offset, size)


def _number(text: str) -> int:
    """An integer as ``strtoul(..., 0)`` reads it: ``0x`` hex, leading ``0`` octal, else decimal."""
    if not _NUMBER.match(text):
        raise ValueError(f"{text[:40]!r} is not a number")
    if text.lower().startswith("0x"):
        return int(text, 16)
    if len(text) > 1 and text.startswith("0"):
        return int(text, 8)
    return int(text, 10)


# -- one copy's bytes ------------------------------------------------------------------


def encode(env: Mapping[str, str], size: int, flag: int | None = None) -> bytes:
    """The ``size`` bytes of one copy holding ``env`` (with a flag byte when redundant)."""
    header = 4 if flag is None else 5
    body = b"".join(_pair(k, v) for k, v in sorted(env.items()) if v != "") + b"\0"
    room = size - header
    if len(body) > room:
        raise BootEnvError(f"environment too large: {len(body)} of {room} bytes needed")
    data = body + PAD * (room - len(body))
    flag_byte = b"" if flag is None else bytes([flag & 0xFF])
    return struct.pack("<I", zlib.crc32(data)) + flag_byte + data


def _pair(key: str, value: str) -> bytes:
    if not key or "=" in key or "\0" in key:
        raise BootEnvError(f"invalid U-Boot variable name {key!r}")
    if "\0" in value:
        raise BootEnvError(f"U-Boot variable {key}: value contains a NUL byte")
    try:
        return f"{key}={value}".encode(*_TEXT) + b"\0"
    except UnicodeEncodeError as exc:  # a lone surrogate that no byte stands for
        raise BootEnvError(f"U-Boot variable {key[:80]!r}: not writable as UTF-8") from exc


def decode(raw: bytes, redundant: bool, name: str = "<bytes>") -> tuple[int, dict[str, str]] | None:
    """``(flag, variables)`` of one copy, or ``None`` when its CRC does not match.

    The flag of a single copy is 0. A valid CRC over malformed pairs is
    corrupt (``BootEnvError``): no tool writes that.
    """
    header = 5 if redundant else 4
    if len(raw) < header + 1:
        return None
    (crc,) = struct.unpack_from("<I", raw)
    data = raw[header:]
    if zlib.crc32(data) != crc:
        return None
    return (raw[4] if redundant else 0), _pairs(data, name)


def _pairs(data: bytes, name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        end = data.find(b"\0", pos)
        if end < 0:
            raise BootEnvError(f"uboot env {name}: unterminated variable at byte {pos}")
        key, eq, value = data[pos:end].partition(b"=")
        if not eq or not key:
            raise BootEnvError(f"uboot env {name}: variable at byte {pos} has no '='")
        env[key.decode(*_TEXT)] = value.decode(*_TEXT)
        pos = end + 1
    return env


def newer(flag_a: int, flag_b: int) -> bool:
    """Whether flag ``a`` is newer than flag ``b`` (U-Boot's rule: 0 follows 255)."""
    if (flag_a, flag_b) == (0, 255):
        return True
    if (flag_a, flag_b) == (255, 0):
        return False
    return flag_a > flag_b


# -- reading and writing through fw_env.config -----------------------------------------


@dataclass(frozen=True)
class _Current:
    """Which copy is current (``None``: none valid) and what it holds."""

    index: int | None
    flag: int
    env: dict[str, str]


def read_env(config: Path) -> dict[str, str]:
    """The variables of the current copy; a missing or blank env is empty."""
    return _current(config, read_config(config)).env


def _current(config: Path, copies: Sequence[EnvCopy]) -> _Current:
    redundant = len(copies) == 2
    found: list[tuple[int, int, dict[str, str]]] = []
    blank = True
    for index, copy in enumerate(copies):
        raw = _read_copy(copy)
        try:  # a short copy (a file cut off) is torn, whatever its CRC says
            decoded = decode(raw, redundant, f"{copy.path}@{copy.offset:#x}") \
                if len(raw) == copy.size else None
        except BootEnvError as exc:
            raise BootEnvError(f"uboot backend: {config}: {exc}") from exc
        if decoded is not None:
            found.append((index, *decoded))
        elif raw and not _is_blank(raw):
            blank = False
    if not found:
        if blank:
            return _Current(None, 0, {})
        raise BootEnvError(f"uboot backend: {config}: no valid env copy (bad CRC in "
                           + ", ".join(f"{c.path}@{c.offset:#x}" for c in copies) + ")")
    best = found[0]
    for candidate in found[1:]:
        if newer(candidate[1], best[1]):
            best = candidate
    return _Current(*best)


def _read_copy(copy: EnvCopy) -> bytes:
    """The copy's bytes: fewer when the file is short, none when it is missing."""
    try:
        with open(copy.path, "rb") as f:
            f.seek(copy.offset)
            return f.read(copy.size)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise BootEnvError(f"uboot backend: {copy.path}: {exc.strerror or exc}") from exc


def _is_blank(raw: bytes) -> bool:
    return raw[0] in _BLANK and raw.count(raw[0]) == len(raw)


def write_env(config: Path, env: Mapping[str, str]) -> None:
    """Replace the environment with ``env`` the power-safe way the copies allow (see above).

    Writing over a corrupt env (no valid copy, not blank) is refused, so a
    damaged env is never silently replaced by a partial one.
    """
    copies = read_config(config)
    current = _current(config, copies)
    if len(copies) == 1:
        _write_single(config, copies[0], env)
        return
    if current.index is None:  # fresh: the first copy, the other one erased if missing
        if len(_read_copy(copies[1])) < copies[1].size:
            write_copy(copies[1], PAD * copies[1].size)
        target, flag = 0, 1
    else:
        target, flag = 1 - current.index, (current.flag + 1) & 0xFF
    write_copy(copies[target], _encoded(config, env, copies[target].size, flag))


def _encoded(config: Path, env: Mapping[str, str], size: int, flag: int | None) -> bytes:
    try:
        return encode(env, size, flag)
    except BootEnvError as exc:
        raise BootEnvError(f"uboot backend: {config}: {exc}") from exc


def _write_single(config: Path, copy: EnvCopy, env: Mapping[str, str]) -> None:
    data = _encoded(config, env, copy.size, None)
    if copy.offset == 0 and _own_file(copy):
        try:
            atomic_write(copy.path, data)
        except OSError as exc:
            raise BootEnvError(f"uboot backend: {copy.path}: {exc.strerror or exc}") from exc
    else:
        write_copy(copy, data)


def _own_file(copy: EnvCopy) -> bool:
    """Whether the copy is a whole regular file (or none yet), so a rename can replace it."""
    try:
        st = copy.path.stat()
    except FileNotFoundError:
        return True
    return S_ISREG(st.st_mode) and st.st_size <= copy.size


def write_copy(copy: EnvCopy, data: bytes) -> None:
    """Overwrite one copy's bytes in place and fsync (create the file if it is missing)."""
    if str(copy.path).startswith("/dev/mtd"):
        raise BootEnvError(f"uboot backend: {copy.path}: MTD flash is not supported; "
                           "use fw_setenv")
    try:
        created = not copy.path.exists()
        fd = os.open(copy.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            offset = copy.offset
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            failpoint("ubootenv.copy-written")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(copy.path.parent)
    except OSError as exc:
        raise BootEnvError(f"uboot backend: {copy.path}: {exc.strerror or exc}") from exc


def edit(config: Path, set: Mapping[str, str] | None = None,  # named as in fw_setenv
         unset: Iterable[str] = ()) -> dict[str, str]:
    """Set (``""`` removes) and unset variables, keeping every other one; returns the result."""
    env = read_env(config)
    for key, value in (set or {}).items():
        if value == "":
            env.pop(key, None)
        else:
            env[key] = value
    for key in unset:
        env.pop(key, None)
    write_env(config, env)
    return env
