"""The U-Boot environment format: our reader/writer, and both against libubootenv's tools."""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from reconciler.boot import ubootenv
from reconciler.boot.ubootenv import EnvCopy
from reconciler.errors import BootEnvError

SIZE = 0x4000
needs_tools = pytest.mark.needs_tool("fw_printenv", "fw_setenv", "mkenvimage")
FOREIGN = {"bootcmd": "run distro_bootcmd", "bootargs": "console=ttyS0,115200 quiet",
           "note": "a=b; é"}


def single(tmp_path: Path, offset: int = 0) -> Path:
    config = tmp_path / "fw_env.config"
    config.write_text(ubootenv.config_text([EnvCopy(tmp_path / "uboot.env", offset, SIZE)]))
    return config


def redundant(tmp_path: Path) -> Path:
    env = tmp_path / "uboot.env"
    config = tmp_path / "fw_env.config"
    config.write_text(ubootenv.config_text([EnvCopy(env, 0, SIZE), EnvCopy(env, SIZE, SIZE)]))
    return config


def copies_of(config: Path) -> list[tuple[int, bool, dict[str, str]]]:
    """(flag, CRC ok, variables) of each copy of a redundant pair, read straight from bytes."""
    out = []
    for copy in ubootenv.read_config(config):
        raw = copy.path.read_bytes()[copy.offset:copy.offset + copy.size]
        decoded = ubootenv.decode(raw, True)
        out.append((raw[4], decoded is not None, decoded[1] if decoded else {}))
    return out


def pair(config: Path, first: tuple[int, dict[str, str]], second: tuple[int, dict[str, str]],
         bad: int | None = None) -> None:
    """Write a redundant pair with chosen flags; ``bad`` (0/1) breaks that copy's CRC."""
    blobs = [bytearray(ubootenv.encode(env, SIZE, flag)) for flag, env in (first, second)]
    if bad is not None:
        blobs[bad][0] ^= 0xFF
    (config.parent / "uboot.env").write_bytes(b"".join(blobs))


def run(tool: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-c", str(config), *args], capture_output=True, text=True,
                          timeout=10, check=False)


def printenv(config: Path) -> dict[str, str]:
    """What ``fw_printenv`` shows (its output parsed: its exit status is not enough)."""
    out = run("fw_printenv", config)
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def setenv(config: Path, name: str, value: str | None = None) -> None:
    out = run("fw_setenv", config, name, *([] if value is None else [value]))
    assert out.returncode == 0, out.stderr


# ---- the format ---------------------------------------------------------------------------


def test_a_copy_is_crc_then_sorted_pairs_then_a_nul_then_ff_padding() -> None:
    raw = ubootenv.encode({"b": "2", "a": "1"}, 64)
    data = b"a=1\0b=2\0\0" + b"\xff" * (60 - 9)
    assert raw == struct.pack("<I", zlib.crc32(data)) + data


def test_a_redundant_copy_carries_its_flag_after_the_crc() -> None:
    raw = ubootenv.encode({"a": "1"}, 64, flag=7)
    assert raw[4] == 7 and struct.unpack("<I", raw[:4])[0] == zlib.crc32(raw[5:])
    assert ubootenv.decode(raw, True) == (7, {"a": "1"})


def test_decode_ignores_a_copy_with_a_bad_crc() -> None:
    raw = bytearray(ubootenv.encode({"a": "1"}, 64))
    raw[10] ^= 1
    assert ubootenv.decode(bytes(raw), False) is None


def test_values_keep_equals_signs_newlines_and_non_ascii() -> None:
    env = {"x": "a=b=c", "y": "line1\nline2", "z": "é€日本", "w": "\\"}
    assert ubootenv.decode(ubootenv.encode(env, 256), False) == (0, env)


def test_an_env_that_does_not_fit_is_refused() -> None:
    with pytest.raises(BootEnvError, match="environment too large"):
        ubootenv.encode({"x": "y" * 100}, 64)


@pytest.mark.parametrize("name", ["", "a=b", "a\0b"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(BootEnvError, match="invalid U-Boot variable name"):
        ubootenv.encode({name: "1"}, 64)


@pytest.mark.parametrize(("a", "b", "a_newer"), [
    (2, 1, True), (1, 2, False), (0, 255, True), (255, 0, False), (254, 0, True),
    (128, 0, True), (0, 128, False), (3, 3, False)])
def test_flag_order_is_u_boots(a: int, b: int, a_newer: bool) -> None:
    assert ubootenv.newer(a, b) is a_newer


def test_config_lines_comments_numbers_and_relative_paths(tmp_path: Path) -> None:
    config = tmp_path / "fw_env.config"
    config.write_text("# MTD device name  offset  size  sector\n\n"
                      "env.bin 0x0 0x4000 0x1000 2  # first\n/dev/x 16384 040000\n")
    assert ubootenv.read_config(config) == (
        EnvCopy(tmp_path / "env.bin", 0, 0x4000), EnvCopy(Path("/dev/x"), 0x4000, 0x4000))


@pytest.mark.parametrize("text", ["", "a 0 0x4000\nb 0 0x4000\nc 0 0x4000\n", "a 0\n",
                                  "a zero 0x4000\n", "a 0 0x4000\nb 0 0x2000\n",
                                  "a 0x_10 0x4000\n", "a 0 1_000\n", "a -1 0x4000\n",
                                  "a 0 0x1000001\n", "a 0 8\n", "a 0 9" + "9" * 5000 + "\n"])
def test_a_bad_config_is_refused_naming_it(tmp_path: Path, text: str) -> None:
    config = tmp_path / "fw_env.config"
    config.write_text(text)
    with pytest.raises(BootEnvError, match=f"^uboot backend: {config}") as caught:
        ubootenv.read_config(config)
    assert len(str(caught.value)) < len(str(config)) + 120


def test_a_config_that_is_not_utf8_is_refused_naming_the_byte(tmp_path: Path) -> None:
    config = tmp_path / "fw_env.config"
    config.write_bytes(b"env 0 0x4000 # \xff\n")
    with pytest.raises(BootEnvError, match="not UTF-8 text \\(byte 15\\)"):
        ubootenv.read_config(config)


def test_a_config_larger_than_any_real_one_is_refused_unread(tmp_path: Path) -> None:
    config = tmp_path / "fw_env.config"
    config.write_bytes(b"#" * (ubootenv.MAX_CONFIG_BYTES + 1))
    with pytest.raises(BootEnvError, match="larger than 65536 bytes"):
        ubootenv.read_config(config)


def test_a_missing_config_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(BootEnvError, match="^uboot backend: .*fw_env.config"):
        ubootenv.read_env(tmp_path / "fw_env.config")


# ---- reading and writing ------------------------------------------------------------------


@pytest.mark.parametrize("layout", [single, redundant])
@pytest.mark.parametrize("content", [None, b"", b"\0" * 2 * SIZE, b"\xff" * 2 * SIZE])
def test_a_missing_or_blank_env_is_empty(tmp_path: Path, layout: object,
                                         content: bytes | None) -> None:
    config = layout(tmp_path)  # type: ignore[operator]
    if content is not None:
        (tmp_path / "uboot.env").write_bytes(content)
    assert ubootenv.read_env(config) == {}


def test_a_blank_redundant_env_is_first_written_to_the_first_copy(tmp_path: Path) -> None:
    config = redundant(tmp_path)
    ubootenv.write_env(config, {"a": "1"})
    assert copies_of(config) == [(1, True, {"a": "1"}), (0xFF, False, {})]  # erased


def test_redundant_writes_alternate_copies_and_count_the_flag_up(tmp_path: Path) -> None:
    config = redundant(tmp_path)
    for n in range(1, 5):
        ubootenv.edit(config, set={"n": str(n)})
    assert copies_of(config) == [(3, True, {"n": "3"}), (4, True, {"n": "4"})]
    assert ubootenv.read_env(config) == {"n": "4"}


def test_the_flag_wraps_from_255_to_0_and_0_stays_newer(tmp_path: Path) -> None:
    config = redundant(tmp_path)
    pair(config, (254, {"n": "old"}), (255, {"n": "new"}))
    ubootenv.edit(config, set={"n": "newest"})
    assert copies_of(config)[0] == (0, True, {"n": "newest"})
    assert ubootenv.read_env(config) == {"n": "newest"}


def test_a_power_cut_mid_write_leaves_the_previous_copy(tmp_path: Path) -> None:
    config = redundant(tmp_path)
    ubootenv.write_env(config, {"n": "1"})
    ubootenv.write_env(config, {"n": "2"})
    env = tmp_path / "uboot.env"
    torn = bytearray(env.read_bytes())
    new = ubootenv.encode({"n": "3", "big": "x" * (SIZE // 2)}, SIZE, 3)
    torn[0:SIZE // 4] = new[: SIZE // 4]  # copy 0 only half written
    env.write_bytes(bytes(torn))
    assert ubootenv.read_env(config) == {"n": "2"}


def test_a_single_copy_file_of_its_own_is_replaced_by_rename(tmp_path: Path) -> None:
    config = single(tmp_path)
    ubootenv.write_env(config, {"a": "1"})
    inode = (tmp_path / "uboot.env").stat().st_ino
    ubootenv.write_env(config, {"a": "2"})
    assert (tmp_path / "uboot.env").stat().st_ino != inode
    assert ubootenv.read_env(config) == {"a": "2"}


def test_a_single_copy_inside_a_shared_file_is_written_in_place(tmp_path: Path) -> None:
    config = single(tmp_path, offset=0x1000)
    image = tmp_path / "uboot.env"
    image.write_bytes(b"\xaa" * 0x1000 + b"\xff" * SIZE + b"\xbb" * 0x1000)
    inode = image.stat().st_ino
    ubootenv.write_env(config, {"a": "1"})
    raw = image.read_bytes()
    assert image.stat().st_ino == inode and len(raw) == 0x1000 + SIZE + 0x1000
    assert raw[:0x1000] == b"\xaa" * 0x1000 and raw[-0x1000:] == b"\xbb" * 0x1000
    assert ubootenv.read_env(config) == {"a": "1"}


def test_edit_keeps_every_other_variable_and_empty_removes(tmp_path: Path) -> None:
    config = redundant(tmp_path)
    ubootenv.write_env(config, {**FOREIGN, "gone": "x"})
    assert ubootenv.edit(config, set={"KRUXOS_A": "good", "gone": ""}) == {
        **FOREIGN, "KRUXOS_A": "good"}
    assert ubootenv.read_env(config) == {**FOREIGN, "KRUXOS_A": "good"}


@pytest.mark.parametrize("layout", [single, redundant])
def test_both_copies_corrupt_raise_naming_the_config_and_nothing_is_written(
    tmp_path: Path, layout: object
) -> None:
    config = layout(tmp_path)  # type: ignore[operator]
    ubootenv.write_env(config, {"a": "1"})
    env = tmp_path / "uboot.env"
    damaged = bytes(b ^ 0x55 for b in env.read_bytes())
    env.write_bytes(damaged)
    with pytest.raises(BootEnvError, match=f"^uboot backend: {config}: no valid env copy"):
        ubootenv.read_env(config)
    with pytest.raises(BootEnvError):
        ubootenv.edit(config, set={"a": "2"})
    assert env.read_bytes() == damaged


@pytest.mark.parametrize("layout", [single, redundant])
def test_a_copy_cut_short_is_torn_even_when_its_crc_matches_what_is_left(
    tmp_path: Path, layout: object
) -> None:
    config = layout(tmp_path)  # type: ignore[operator]
    data = b"a=1\0\0"
    header = struct.pack("<I", zlib.crc32(data)) + (b"\x01" if layout is redundant else b"")
    (tmp_path / "uboot.env").write_bytes(header + data)
    with pytest.raises(BootEnvError, match="no valid env copy"):
        ubootenv.read_env(config)


def test_a_value_no_bytes_stand_for_is_refused_as_a_boot_env_error() -> None:
    with pytest.raises(BootEnvError, match="not writable as UTF-8"):
        ubootenv.encode({"x": "\ud800"}, SIZE)


def test_mtd_flash_is_refused_for_writing(tmp_path: Path) -> None:
    config = tmp_path / "fw_env.config"
    config.write_text("/dev/mtd-kruxos-test-none 0x0 0x4000\n/dev/mtd-kruxos-test-none "
                      "0x4000 0x4000\n")
    with pytest.raises(BootEnvError, match="MTD flash is not supported"):
        ubootenv.write_env(config, {"a": "1"})


# ---- against the real tools ---------------------------------------------------------------


@needs_tools
@pytest.mark.parametrize("layout", [single, redundant])
def test_fw_printenv_reads_what_we_wrote(tmp_path: Path, layout: object) -> None:
    config = layout(tmp_path)  # type: ignore[operator]
    for n in range(3):  # several writes: the redundant pair alternates
        ubootenv.write_env(config, {**FOREIGN, "KRUXOS_TRIES": str(n)})
    assert printenv(config) == {**FOREIGN, "KRUXOS_TRIES": "2"}


@needs_tools
def test_fw_printenv_follows_our_flag_wrap(tmp_path: Path) -> None:
    config = redundant(tmp_path)
    pair(config, (254, {"n": "old"}), (255, {"n": "new"}))
    ubootenv.edit(config, set={"n": "wrapped"})
    assert printenv(config) == {"n": "wrapped"}


@needs_tools
def test_our_single_copy_is_byte_identical_to_mkenvimage(tmp_path: Path) -> None:
    text = tmp_path / "env.txt"
    text.write_text("".join(f"{k}={v}\n" for k, v in sorted(FOREIGN.items())))
    subprocess.run(["mkenvimage", "-s", hex(SIZE), "-o", str(tmp_path / "mk.bin"), str(text)],
                   check=True, timeout=10)
    assert (tmp_path / "mk.bin").read_bytes() == ubootenv.encode(FOREIGN, SIZE)


@needs_tools
@pytest.mark.parametrize("layout", [single, redundant])
def test_we_read_what_fw_setenv_wrote(tmp_path: Path, layout: object) -> None:
    config = layout(tmp_path)  # type: ignore[operator]
    ubootenv.write_env(config, FOREIGN)
    setenv(config, "KRUXOS_DEFAULT", "B")
    setenv(config, "KRUXOS_FALLBACK", "B: trial tries exhausted")
    setenv(config, "bootargs")  # no value: fw_setenv deletes
    expected = {k: v for k, v in FOREIGN.items() if k != "bootargs"}
    expected.update(KRUXOS_DEFAULT="B", KRUXOS_FALLBACK="B: trial tries exhausted")
    assert ubootenv.read_env(config) == expected == printenv(config)


FLAG_CASES = [  # (flag of copy 1, flag of copy 2, broken copy, copy that wins)
    (1, 2, None, 1), (2, 1, None, 0), (255, 0, None, 1), (0, 255, None, 0), (3, 3, None, 0),
    (0, 0, None, 0), (254, 0, None, 0), (1, 2, 1, 0), (2, 1, 0, 1), (255, 0, 1, 0)]


@needs_tools
@pytest.mark.parametrize(("flag1", "flag2", "bad", "winner"), FLAG_CASES)
def test_we_pick_the_copy_fw_printenv_picks(tmp_path: Path, flag1: int, flag2: int,
                                           bad: int | None, winner: int) -> None:
    config = redundant(tmp_path)
    envs = [{"which": "first"}, {"which": "second"}]
    pair(config, (flag1, envs[0]), (flag2, envs[1]), bad)
    assert ubootenv.read_env(config) == printenv(config) == envs[winner]


@needs_tools
@pytest.mark.parametrize(("flag1", "flag2", "bad", "winner"), FLAG_CASES)
def test_fw_setenv_and_we_write_the_same_copy_with_the_same_flag(
    tmp_path: Path, flag1: int, flag2: int, bad: int | None, winner: int
) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for side in (ours, theirs):
        side.mkdir()
        pair(redundant(side), (flag1, {"which": "first"}), (flag2, {"which": "second"}), bad)
    ubootenv.edit(redundant(ours), set={"zz_new": "value"})
    setenv(redundant(theirs), "zz_new", "value")
    assert (ours / "uboot.env").read_bytes() == (theirs / "uboot.env").read_bytes()
    assert copies_of(redundant(ours))[1 - winner][0] == ([flag1, flag2][winner] + 1) & 0xFF
    assert ubootenv.read_env(redundant(theirs)) == {"which": ["first", "second"][winner],
                                                    "zz_new": "value"}


@needs_tools
def test_a_blank_env_is_empty_to_us_while_the_tools_refuse_it(tmp_path: Path) -> None:
    """A deliberate difference: a blank env is a fresh device to us, an error (243) to them."""
    config = redundant(tmp_path)
    (tmp_path / "uboot.env").write_bytes(b"\0" * 2 * SIZE)
    assert run("fw_printenv", config).returncode == 243
    assert ubootenv.read_env(config) == {}
    ubootenv.edit(config, set={"KRUXOS_A": "good"})
    assert printenv(config) == {"KRUXOS_A": "good"}


@needs_tools
def test_fw_printenv_of_a_missing_name_exits_0_so_we_parse_its_output(tmp_path: Path) -> None:
    config = single(tmp_path)
    ubootenv.write_env(config, FOREIGN)
    out = run("fw_printenv", config, "missing")
    assert (out.returncode, out.stdout.strip()) == (0, "missing=")
