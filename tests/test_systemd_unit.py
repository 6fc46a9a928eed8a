"""The shipped systemd unit lets the daemon write what an update writes.

``deploy/systemd/kruxos-daemon.service`` sandboxes the daemon; a sandbox that
makes the boot env read-only passes every simulated test (the simulator runs
no unit) and fails on the first real update. The whole-device test checks it
inside the unit's mount namespace (``tests/system/test_update.py``); this checks
the unit's settings against systemd's documented rules, in every tier.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from reconciler.config import BootloaderConfig, DeviceConfig
from tests.conftest import TESTS

UNIT = TESTS.parent / "deploy" / "systemd" / "kruxos-daemon.service"

#: What each ProtectSystem= value mounts read-only (systemd.exec(5)).
READ_ONLY = {
    "": (), "no": (), "false": (),
    "yes": ("/usr", "/boot", "/efi"), "true": ("/usr", "/boot", "/efi"),
    "full": ("/usr", "/boot", "/efi", "/etc"),
    "strict": ("/",),
}


def service_settings() -> dict[str, list[str]]:
    """The [Service] section: key -> values in order (an empty assignment resets the list)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values = settings.setdefault(key.strip(), [])
            if value.strip():
                values.extend(value.split())
            else:
                values.clear()
    return settings


def under(path: str, top: str) -> bool:
    return PurePosixPath(path).is_relative_to(top)


def writable(path: str, settings: dict[str, list[str]]) -> bool:
    protect = settings.get("ProtectSystem", [""])[-1]
    read_only = READ_ONLY[protect] + tuple(p.lstrip("-") for p in settings.get("ReadOnlyPaths", []))
    # systemd 252 (Debian 12) keeps a protected directory read-only when ReadWritePaths=
    # names it exactly (seen in the QEMU guest: /boot stayed read-only, /boot/grub did not).
    writable_again = [p.lstrip("-") for p in settings.get("ReadWritePaths", [])]
    if any(under(path, top) and top not in read_only for top in writable_again):
        return True
    return not any(under(path, top) for top in read_only)


def test_the_default_boot_env_and_data_dir_are_writable_in_the_sandbox() -> None:
    settings = service_settings()
    data_dir = DeviceConfig.model_fields["data_dir"].default
    esp_files = [f"{esp}/{name}" for esp in ("/boot", "/efi")
                 for name in ("loader/loader.conf", "loader/entries/kruxos-a.conf",
                              "kruxos/a/vmlinuz", "kruxos/damaged/x")]
    for path in (BootloaderConfig().env, data_dir, *esp_files):
        assert writable(path, settings), f"{UNIT.name} makes {path} read-only for the daemon"


def test_the_model_sees_protect_system_full_hide_boot() -> None:
    """The check can fail: under full, /boot is read-only unless a directory below is named."""
    assert not writable("/boot/grub/grubenv", {"ProtectSystem": ["full"]})
    assert not writable("/boot/grub/grubenv",
                        {"ProtectSystem": ["full"], "ReadWritePaths": ["-/boot"]})
    assert writable("/boot/grub/grubenv",
                    {"ProtectSystem": ["full"], "ReadWritePaths": ["-/boot/grub"]})
