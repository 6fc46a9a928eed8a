"""Ed25519 key files: the publisher's signing keys and the device's trusted keys.

A key pair is two small text files in one directory::

    NAME.key   the 32-byte Ed25519 seed, hex, mode 0600 (keep it offline)
    NAME.pub   the 32-byte public key, hex (ship it inside the OS image)

A key is named on the wire by its *keyid*: the first 16 hex digits of the
SHA-256 of the raw public key. The device computes keyids from the public keys
it trusts, so a keyid in a signature is only a hint, never a source of trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from reconciler.durable import read_at_most
from reconciler.errors import ConfigError, ReleaseError

KEYID_HEX_LEN = 16


def keyid_of(key: VerifyKey) -> str:
    """The keyid of a public key: first 16 hex digits of SHA-256 of its raw bytes."""
    return hashlib.sha256(bytes(key)).hexdigest()[:KEYID_HEX_LEN]


def generate_keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Create ``NAME.key`` (0600) and ``NAME.pub`` in ``directory``; never overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise ReleaseError(f"{path}: already exists, refusing to overwrite a key")
    signing = SigningKey.generate()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(PRIVATE_MARK + "\n" + bytes(signing).hex() + "\n")
    pub_path.write_text(bytes(signing.verify_key).hex() + "\n")
    return key_path, pub_path


#: A key file holds 64 hex digits and a newline; more than this is not a key file.
_KEY_FILE_LIMIT = 1024


#: The first line of a private key file written by ``kruxos release keygen``: the two
#: kinds of file are otherwise both 64 hex digits, and each reader refuses the other.
PRIVATE_MARK = "# KruxOS Ed25519 private key: keep it offline, never ship it in an image"


def _read_key_text(path: Path, what: str) -> tuple[str, bool]:
    """The hex text of a key file and whether it carries the private-key mark."""
    try:
        data, too_large = read_at_most(path, _KEY_FILE_LIMIT)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    if too_large:
        raise ConfigError(f"{path}: not a hex {what} (larger than {_KEY_FILE_LIMIT} bytes)")
    try:
        text = data.decode("ascii")
    except ValueError as exc:
        raise ConfigError(f"{path}: not a hex {what}") from exc
    lines = text.strip().splitlines()
    private = bool(lines) and lines[0].strip() == PRIVATE_MARK
    return "".join(lines[1:] if private else lines), private


def _read_hex32(path: Path, what: str, text: str | None = None) -> bytes:
    if text is None:
        text, _ = _read_key_text(path, what)
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise ConfigError(f"{path}: not a hex {what}") from exc
    if len(raw) != 32:
        raise ConfigError(f"{path}: a {what} is 32 bytes, this file holds {len(raw)}")
    return raw


def load_signing_key(path: Path) -> SigningKey:
    """A publisher's private key from its ``.key`` file.

    A public key cannot sign: a file named ``.pub``, or an unmarked file (written
    before the mark existed) whose bytes are the public key of a ``.pub`` beside
    it, is refused, since a signature made with it would be refused by every
    device."""
    what = "Ed25519 private key"
    text, private = _read_key_text(path, what)
    if not private and path.suffix == ".pub":
        raise ConfigError(f"{path}: this is a public key (.pub); sign with the private key "
                          f"file (e.g. {path.with_suffix('.key')})")
    raw = _read_hex32(path, what, text)
    if not private:
        for pub in sorted(path.parent.glob("*.pub"))[:MAX_KEYS_IN_DIR]:
            same = False
            with contextlib.suppress(ConfigError):  # an unreadable neighbour is not this key
                same = _read_hex32(pub, "Ed25519 public key") == raw
            if same:
                raise ConfigError(f"{path}: holds the same bytes as the public key {pub}; "
                                  "sign with the private key file")
    return SigningKey(raw)


def load_public_key(path: Path) -> VerifyKey:
    """One public key from its ``.pub`` file (a marked private key file is refused)."""
    text, private = _read_key_text(path, "Ed25519 public key")
    if private:
        raise ConfigError(f"{path}: this is a private key; a device trusts the public key "
                          f"(e.g. {path.with_suffix('.pub')}), and the private key never "
                          "leaves the publisher")
    try:
        return VerifyKey(_read_hex32(path, "Ed25519 public key", text))
    except CryptoError as exc:
        raise ConfigError(f"{path}: not a valid Ed25519 public key") from exc


def load_trusted_keys(paths: Iterable[Path]) -> dict[str, VerifyKey]:
    """The device's trusted keys by keyid (from its config, never from a channel).

    An entry that is a directory stands for every ``*.pub`` file in it (the
    booted image's ``/etc/kruxos/keys/``), read each time: the trust root is
    whatever the running image carries, so a key rotation arrives with an image
    and leaves with a rollback."""
    keys: dict[str, VerifyKey] = {}
    for path in paths:
        entry = Path(path)
        files = sorted(entry.glob("*.pub")) if entry.is_dir() else [entry]
        for file in files[:MAX_KEYS_IN_DIR]:
            key = load_public_key(file)
            keys[keyid_of(key)] = key
    return keys


#: The most keys a key directory is read for (an image carries one or two).
MAX_KEYS_IN_DIR = 32


def load_revoked(entries: Iterable[str | Path]) -> frozenset[str]:
    """Revoked keyids from config entries: a 16-hex keyid or the path of a ``.pub`` file."""
    revoked: set[str] = set()
    for entry in entries:
        text = str(entry).strip()
        if len(text) == KEYID_HEX_LEN and all(c in "0123456789abcdef" for c in text.lower()):
            revoked.add(text.lower())
        else:
            revoked.add(keyid_of(load_public_key(Path(text))))
    return frozenset(revoked)
