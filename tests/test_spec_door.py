"""Hostile specs are refused at the door, quickly, with a short message.

Each rule has its decision tests here: the size limit (before parsing), the
nesting-depth limit (before the composer's recursion can exhaust the stack),
the cap on alias expansion (legal anchors keep working), strict booleans and
integers (the message names the form to write), printable names, URLs parsed
by the one parser the runtime fetches with, messages that quote at most ~80
characters of a value, ``spec validate`` exiting 2 without a traceback, and the
keeper that reads an unchanged file once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reconciler.specfile as specfile
from reconciler.config import load_device
from reconciler.errors import SpecError, UrlError
from reconciler.quoting import excerpt, printable
from reconciler.release.client import metadata_url
from reconciler.spec import revision_of
from reconciler.specfile import (
    LAST_GOOD,
    MAX_DEPTH,
    MAX_NODES,
    MAX_SPEC_BYTES,
    SpecKeeper,
    load_spec,
    parse_spec,
)
from reconciler.urls import parse_channel_url, parse_url

REPO = Path(__file__).resolve().parent.parent
KRUXOS = [sys.executable, "-m", "reconciler.cli.main"]

BASE = """\
apiVersion: kruxos.io/v1
kind: UpdatePolicy
metadata:
  name: gateways
spec:
  version: 1.0.1
  channel:
    url: http://updates.example.com/stable/
"""


def _refusal(text: str | bytes, name: str = "spec.yaml") -> str:
    content = text.encode() if isinstance(text, str) else text
    with pytest.raises(SpecError) as info:
        parse_spec(content, Path(name))
    return str(info.value)


def _with(extra: str) -> str:
    """BASE with more lines under ``spec:``."""
    return BASE + extra


def _nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def billion_laughs(levels: int = 9) -> str:
    """The classic: nine aliases of nine aliases of ... one string, in ~1 KB."""
    lines = ['lol0: &lol0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels + 1):
        refs = ",".join([f"*lol{level - 1}"] * 9)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    return "\n".join(lines) + "\n"


def _printable_only(text: str) -> bool:
    return all(c == "\n" or unicodedata.category(c)[0] != "C" for c in text)


# ---- size ----------------------------------------------------------------------------------

def test_a_spec_larger_than_256_kib_is_refused_before_it_is_parsed() -> None:
    # valid YAML all the way: a comment 9.6 MB long once took 75 s and 920 MB to validate
    huge = BASE + "# " + "x" * 9_600_000 + "\n"
    message = _refusal(huge)
    assert message == (f"spec.yaml: the spec is larger than 256 KiB ({len(huge)} bytes); a spec "
                       "names a version, a channel and a policy in a few hundred bytes")


def test_a_file_larger_than_the_limit_is_not_even_read_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spec.yaml"
    with path.open("wb") as stream:  # sparse: 2 GiB the reader must not load
        stream.write(BASE.encode())
        stream.truncate(2 << 30)
    read: list[int] = []
    real_read = os.read

    def counted(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        read.append(len(data))
        return data
    monkeypatch.setattr(os, "read", counted)
    with pytest.raises(SpecError, match=r"larger than 256 KiB \(2147483648 bytes\)"):
        load_spec(path)
    assert sum(read) == MAX_SPEC_BYTES + 1


def test_a_spec_just_under_the_limit_is_still_read() -> None:
    padding = "#" * 79 + "\n"
    text = BASE + padding * ((MAX_SPEC_BYTES - len(BASE)) // len(padding))
    assert len(text.encode()) <= MAX_SPEC_BYTES
    assert parse_spec(text.encode(), Path("s.yaml")).policy.metadata.name == "gateways"
    assert "larger than 256 KiB" in _refusal(text + "#" * (MAX_SPEC_BYTES - len(text) + 1))


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: os.mkfifo(p)],
                         ids=["directory", "fifo"])
def test_a_spec_path_that_is_not_a_regular_file_is_refused_without_blocking(
        tmp_path: Path, make: Callable[[Path], None]) -> None:
    path = tmp_path / "spec.yaml"
    make(path)
    with pytest.raises(SpecError, match=r"spec\.yaml: cannot read the spec \(not a regular"):
        load_spec(path)


# ---- nesting depth -------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [33, 500, 5000, 60_000])
def test_flow_collections_nested_too_deep_are_refused_not_a_recursion_error(depth: int) -> None:
    message = _refusal(BASE.replace("version: 1.0.1", "version: " + _nested(depth)))
    assert message == f"spec.yaml:6: YAML error: collections are nested more than {MAX_DEPTH} deep"


@pytest.mark.parametrize("document", [
    "a:\n" + "- " * 5000 + "x\n",                                         # block sequences
    "a:\n" + "".join(" " * i + "k:\n" for i in range(1, 60)) + " " * 60 + "x\n",  # block maps
    "a: " + "{a: " * 5000 + "}" * 5000 + "\n",                              # flow mappings
    "a: " + "[x, " * 5000 + "]" * 5000 + "\n",
])
def test_every_kind_of_deep_nesting_is_refused(document: str) -> None:
    assert f"nested more than {MAX_DEPTH} deep" in _refusal(document)


def test_nesting_up_to_the_limit_is_read_and_judged_by_its_fields() -> None:
    # the root mapping and spec: are two levels: a field under spec: may nest 30 more
    deep_enough = _with("  extra: " + _nested(MAX_DEPTH - 2) + "\n")
    assert _refusal(deep_enough) == "spec.yaml:9: spec.extra: unknown field"
    too_deep = _with("  extra: " + _nested(MAX_DEPTH - 1) + "\n")
    assert "nested more than" in _refusal(too_deep)


# ---- aliases -------------------------------------------------------------------------------

def test_a_billion_laughs_is_refused_quickly_with_a_short_message() -> None:
    message = _refusal(BASE + billion_laughs())
    assert message.startswith("spec.yaml:")
    assert f"more than {MAX_NODES} values with its aliases expanded" in message
    assert len(message) < 200


def test_an_alias_used_as_a_value_is_quoted_by_kind_never_expanded() -> None:
    # under the cap the alias is built, then refused by type: the message must not repr it
    lols = ",".join(['"lol"'] * 9)
    text = BASE.replace("spec:\n", f"x: &many [{lols}]\nspec:\n").replace(
        "version: 1.0.1", "version: *many")
    message = _refusal(text)
    assert "spec.version: a list of 9 items is neither 'latest'" in message, message
    assert "lol" not in message


def test_a_long_string_aliased_many_times_is_refused_before_anything_prints_it() -> None:
    # a duplicate key makes the YAML reader print both values: 600 x 200 KB once took 490 MiB
    text = ('a: &a "' + "x" * 200_000 + '"\nb: &b [' + ",".join(["*a"] * 600) + "]\n"
            "c: *b\nc: *b\n")
    message = _refusal(text)
    assert message == ("spec.yaml:2: YAML error: the document holds more than 1048576 "
                       "characters of text with its aliases expanded")


def test_an_anchor_defined_twice_is_legal_and_the_alias_takes_the_latest() -> None:
    text = _with("  x: &v 1.0.9\n  version: &v 1.0.2\n").replace("  version: 1.0.1\n", "")
    text = text.replace("  version: &v 1.0.2\n", "  version: &v 1.0.2\n  y: *v\n")
    message = _refusal(text)  # x and y are unknown fields, the version is read
    assert "spec.x: unknown field" in message and "spec.y: unknown field" in message
    assert "spec.version" not in message


def test_a_spec_with_hundreds_of_problems_lists_the_first_ten() -> None:
    message = _refusal(_with("".join(f"  k{i}: 1\n" for i in range(500))))
    lines = message.splitlines()
    assert len(lines) == 11 and lines[-1] == "spec.yaml: ... and 490 more problems", lines[-3:]


def test_legal_anchors_aliases_and_merge_keys_keep_working() -> None:
    text = _with("""\
  rollout:
    windows:
      - &nightly
        days: &weekdays [mon, tue, wed, thu, fri]
        start: "02:00"
        duration: 1h
      - <<: *nightly
        days: [sat, sun]
        start: "04:00"
      - *nightly
      - days: *weekdays
        start: "23:00"
        duration: 2h
""")
    windows = parse_spec(text.encode(), Path("s.yaml")).policy.spec.rollout.windows
    assert [w.start for w in windows] == ["02:00", "04:00", "02:00", "23:00"]
    assert windows[1].days == ["sat", "sun"] and windows[1].duration == windows[0].duration
    assert windows[3].days == ["mon", "tue", "wed", "thu", "fri"]


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    message = _refusal(_with("  loop: &me [1, *me]\n"))
    assert message == "spec.yaml:9: YAML error: the alias *me refers to a collection it is inside"


def test_a_document_with_too_many_values_is_refused_even_without_aliases() -> None:
    message = _refusal(_with("  extra: [" + "[]," * 40_000 + "]\n"))
    assert f"more than {MAX_NODES} values" in message


# ---- strict booleans and integers ----------------------------------------------------------

BOOLEAN_FIELDS = {
    "autoReboot": ("  rollout:\n    autoReboot: {}\n", "spec.rollout.autoReboot", 10),
    "suspend": ("  suspend: {}\n", "spec.suspend", 9),
    "allowDowngrade": ("  allowDowngrade: {}\n", "spec.allowDowngrade", 9),
    "rollback.automatic": ("  rollback:\n    automatic: {}\n", "spec.rollback.automatic", 10),
}
LOOSE_BOOLEANS = {
    "'true'": "'true' is a string, not a boolean: write true without quotes",
    '"false"': "'false' is a string, not a boolean: write false without quotes",
    "1": "1 is not a boolean: write true or false",
    "0": "0 is not a boolean: write true or false",
    "off": "'off' is not a boolean in YAML 1.2: write false",
    "yes": "'yes' is not a boolean in YAML 1.2: write true",
    "On": "'On' is not a boolean in YAML 1.2: write true",
    "n": "'n' is not a boolean in YAML 1.2: write false",
    "1.0": "1.0 is not a boolean: write true or false",
    "maybe": "'maybe' is not a boolean: write true or false",
}


@pytest.mark.parametrize("field", BOOLEAN_FIELDS)
@pytest.mark.parametrize("written", LOOSE_BOOLEANS)
def test_a_loose_boolean_is_refused_naming_the_form_to_write(field: str, written: str) -> None:
    template, path, line = BOOLEAN_FIELDS[field]
    message = _refusal(_with(template.format(written)))
    assert message == f"spec.yaml:{line}: {path}: {LOOSE_BOOLEANS[written]}"


@pytest.mark.parametrize("field", BOOLEAN_FIELDS)
@pytest.mark.parametrize(("written", "value"), [("true", True), ("false", False),
                                                 ("True", True), ("FALSE", False)])
def test_yaml_booleans_are_accepted(field: str, written: str, value: bool) -> None:
    template, path, _ = BOOLEAN_FIELDS[field]
    policy = parse_spec(_with(template.format(written)).encode(), Path("s.yaml")).policy
    node: object = policy
    for part in path.split("."):
        node = getattr(node, {"autoReboot": "auto_reboot",
                              "allowDowngrade": "allow_downgrade"}.get(part, part))
    assert node is value


def test_a_yaml_1_1_document_is_refused_since_it_reads_off_as_false() -> None:
    message = _refusal("%YAML 1.1\n---\n" + _with("  suspend: off\n"))
    assert message == ("spec.yaml:1: YAML error: a spec is YAML 1.2; remove the %YAML "
                       "directive (YAML 1.1 reads yes/no/on/off as booleans)")


def test_an_unknown_yaml_version_is_a_spec_error_not_a_crash() -> None:
    assert "YAML error" in _refusal("%YAML 1.3\n---\n" + BASE)


@pytest.mark.parametrize("written", ["true", "'3'", "3.0", "1e3", "[3]", "0x"])
def test_a_loose_integer_is_refused_naming_the_form_to_write(written: str) -> None:
    message = _refusal(_with(f"  health:\n    successThreshold: {written}\n"))
    assert message.startswith("spec.yaml:10: spec.health.successThreshold: "), message
    assert message.endswith("is not an integer: write a plain integer such as 3"), message


def test_a_plain_integer_is_accepted() -> None:
    text = _with("  health:\n    successThreshold: 3\n")
    assert parse_spec(text.encode(), Path("s.yaml")).policy.spec.health.success_threshold == 3


def test_an_integer_too_long_to_convert_is_a_spec_error() -> None:
    message = _refusal(_with("  health:\n    successThreshold: " + "9" * 5000 + "\n"))
    assert message == "spec.yaml: YAML error: a number has more than 4300 digits"


# ---- names and messages --------------------------------------------------------------------

@pytest.mark.parametrize(("written", "char"), [
    (r'"office\ngateways"', r"'\n'"),
    (r'"\e[31mred\e[0m"', r"'\x1b'"),
    (r'"evil\u202Eexe.txt"', r"'\u202e'"),
    (r'"nul\0byte"', r"'\x00'"),
    (r'"tab\there"', r"'\t'"),
])
def test_a_name_with_a_control_character_is_refused(written: str, char: str) -> None:
    message = _refusal(BASE.replace("name: gateways", f"name: {written}"))
    assert message.startswith("spec.yaml:4: metadata.name: "), message
    assert f"contains the control character {char}: a name is one line of printable text" \
        in message
    assert _printable_only(message), repr(message)


def test_a_printable_unicode_name_is_accepted() -> None:
    text = BASE.replace("name: gateways", "name: Büro-Gateways ✓ (Zürich)")
    assert parse_spec(text.encode(), Path("s.yaml")).policy.metadata.name == \
        "Büro-Gateways ✓ (Zürich)"


def test_a_name_longer_than_128_characters_is_refused_quoting_80() -> None:
    message = _refusal(BASE.replace("name: gateways", "name: " + "n" * 5000))
    assert message == ("spec.yaml:4: metadata.name: '" + "n" * 80 + "'... is longer than "
                       "128 characters")


def test_a_huge_bad_value_is_quoted_in_at_most_80_characters() -> None:
    message = _refusal(BASE.replace("version: 1.0.1", "version: v" + "9" * 200_000))
    assert message == ("spec.yaml:6: spec.version: 'v" + "9" * 79 + "'... is neither "
                       "'latest' nor a semantic version like 1.0.1")


def test_a_huge_or_unprintable_unknown_key_is_shown_short_and_escaped() -> None:
    message = _refusal(_with('  "\\e[2J' + "k" * 1000 + '": 1\n'))  # a key is < 1024
    assert message.startswith("spec.yaml:9: spec.\\x1b[2Jkkk"), message
    assert message.endswith("...: unknown field") and len(message) < 120
    assert _printable_only(message)


def test_a_yaml_error_quoting_a_huge_key_is_cut_and_escaped() -> None:
    key = "\\e" + "d" * 1000
    message = _refusal(BASE + f'"{key}": 1\n"{key}": 2\n')
    assert "duplicate key" in message and len(message) < 250 and _printable_only(message)


@pytest.mark.parametrize(("value", "shown"), [
    ("short", "'short'"),
    ("x" * 100, "'" + "x" * 80 + "'..."),
    ("\x1b[31m", r"'\x1b[31m'"),
    (b"\x00" * 100, repr(b"\x00" * 80) + "..."),
    (10 ** 5000, "an integer of about 5000 digits"),
    (list(range(10 ** 6)), "a list of 1000000 items"),
    ({"a": 1}, "a mapping of 1 item"),
    (True, "true"), (None, "null"), (1.5, "1.5"), (object(), "a value of type object"),
], ids=["short", "long", "escape", "bytes", "huge int", "big list", "mapping", "bool", "none",
        "float", "object"])
def test_an_excerpt_shows_at_most_80_characters_and_never_walks_a_container(
        value: object, shown: str) -> None:
    assert excerpt(value) == shown


def test_printable_escapes_controls_and_cuts() -> None:
    assert printable("a\nb\x1b\u2028c", 200) == "a\\nb\\x1b\\u2028c"
    assert printable("x" * 10, 4) == "xxxx..."


# ---- URLs ----------------------------------------------------------------------------------

BAD_URLS = {
    "http://[::1": "is not a valid URL (an IPv6 host is written between [ and ]",
    "http://[fe80::1%25eth0]/": "an IPv6 zone",
    "http://[1::2::3]/": "is not an IPv6 address",
    "http://[::1]x/": "only a :port may follow",
    "http://300.1.1.1/": "is not an IPv4 address",
    "http://host:99999/": "the port must be a number from 1 to 65535",
    "http://host:0/": "port 0 is not a port",
    "http://host:+80/": "the port must be a number",
    "http://host:http/": "the port must be a number",
    "ftp://host/": "is not an http(s) URL",
    "http:/host/": "is not an http(s) URL",
    "//host/": "is not an http(s) URL",
    "http:///path": "has no host",
    "http://ho st/": "contains a space",
    "http://host/\x1b[2J": r"contains '\x1b'",
    "http://hôst/": "contains 'ô'",
    "http://-host-/": "is not a host name",
    "http://host/a#frag": "has a #fragment",
    "http://host/a?b=1": "has a ?query",
    "http://host/%zz": "must be percent-encoded",
    "http://host/" + "a" * 3000: "longer than 2048 characters",
}


@pytest.mark.parametrize("url", BAD_URLS, ids=[u[:40] for u in BAD_URLS])
def test_a_bad_channel_url_is_refused_at_validation(url: str) -> None:
    quoted = url.replace("\\", "\\\\").replace('"', '\\"').replace("\x1b", "\\e")
    message = _refusal(BASE.replace("http://updates.example.com/stable/", f'"{quoted}"'))
    assert message.startswith("spec.yaml:8: spec.channel.url: "), message
    assert BAD_URLS[url] in message, message
    assert _printable_only(message) and len(message) < 400


@pytest.mark.parametrize("url", BAD_URLS, ids=[u[:40] for u in BAD_URLS])
def test_the_runtime_refuses_the_same_urls_with_the_same_parser(url: str) -> None:
    with pytest.raises(UrlError) as info:
        metadata_url(url)
    assert BAD_URLS[url] in str(info.value)


@pytest.mark.parametrize("port_map", [False, True], ids=["real device", "simulated"])
def test_every_url_the_runtime_fetches_passes_the_same_parser(tmp_path: Path,
                                                             port_map: bool) -> None:
    config = tmp_path / "device.yaml"
    config.write_text("slots:\n  A: {device: a}\n  B: {device: b}\ntrustedKeys: [k.pub]\n"
                      + ("portMap: ports.json\n" if port_map else ""))
    (tmp_path / "ports.json").write_text('{"127.0.0.1:8080": "127.0.0.1:41234"}')
    device = load_device(config)
    for url in (u for u in BAD_URLS if "?" not in u):  # a health URL may carry a query
        with pytest.raises(UrlError):
            device.map_url(url)
    mapped = device.map_url("http://127.0.0.1:8080/c/")
    assert mapped == ("http://127.0.0.1:41234/c/" if port_map else "http://127.0.0.1:8080/c/")


def test_credentials_in_a_spec_url_are_refused_and_never_echoed() -> None:
    for url in ("http://alice:s3cr3t-pw@updates.example.com/stable/",
                "http://s3cr3t-pw@updates.example.com/", "http:alice:s3cr3t-pw@x/"):
        message = _refusal(BASE.replace("http://updates.example.com/stable/", url))
        assert "s3cr3t-pw" not in message, message
    assert message.endswith("is not an http(s) URL (write http://host/...)")
    first = _refusal(BASE.replace("http://updates.example.com/stable/",
                                  "https://alice:s3cr3t-pw@updates.example.com/"))
    assert first == ("spec.yaml:8: spec.channel.url: 'https://alice:***@updates.example.com/' "
                     "carries "
                     "credentials (user:password@): put channel credentials in the device "
                     "config, never in the spec")


def test_a_bad_health_url_is_refused_too() -> None:
    message = _refusal(_with('  health:\n    url: "http://[::1:7800/health"\n'))
    assert message.startswith("spec.yaml:10: spec.health.url: ") and "IPv6" in message


@pytest.mark.parametrize(("url", "metadata"), [
    ("http://updates.example.com/stable", "http://updates.example.com/stable/metadata.json"),
    ("https://[::1]:8443/c/", "https://[::1]:8443/c/metadata.json"),
    ("http://10.0.0.1:8080", "http://10.0.0.1:8080/metadata.json"),
    ("http://Host.Example/a%20b/", "http://host.example/a%20b/metadata.json"),
])
def test_an_accepted_channel_url_is_the_one_the_runtime_fetches(url: str, metadata: str) -> None:
    policy = parse_spec(BASE.replace("http://updates.example.com/stable/", url).encode(),
                        Path("s.yaml")).policy
    assert metadata_url(policy.spec.channel.url) == metadata


_HOST = st.one_of(
    st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}\Z"),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_URL_TEXT = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https", "HTTP", "ftp"]),
    _HOST,
    st.one_of(st.just(""), st.integers(0, 70000).map(lambda p: f":{p}")),
    st.text(alphabet="abc/%20-._~!$&'()*+,;=:@?#[] \x1b", max_size=20),
)


@settings(max_examples=300, deadline=None, database=None)
@given(_URL_TEXT)
def test_any_url_the_parser_accepts_an_http_client_reads_the_same_way(text: str) -> None:
    try:
        url = parse_url(text)
    except UrlError:
        return
    client = httpx.URL(url.text())
    assert client.scheme == url.scheme
    assert client.host == url.host
    assert client.port == url.port or (client.port is None and url.port in (80, 443))
    assert client.raw_path.decode() == (url.path or "/") + (f"?{url.query}" if url.query else "")
    assert parse_channel_url(url.text().split("?")[0]).join("metadata.json").endswith(
        "/metadata.json")


# ---- the CLI -------------------------------------------------------------------------------

HOSTILE = {
    "deep nesting": BASE.replace("version: 1.0.1", "version: " + _nested(5000)),
    "billion laughs": BASE + billion_laughs(),
    "unclosed IPv6 host": BASE.replace("http://updates.example.com/stable/", '"http://[::1"'),
    "credentials": BASE.replace("http://", "http://alice:s3cr3t-pw@"),
    "control characters": BASE.replace("name: gateways", r'name: "a\nb\e[31mred"'),
    "9.6 MB": BASE + "# " + "x" * 9_600_000 + "\n",
    "binary": "\x00\xff\xfe garbage \x1b[2J",
    "huge integer": _with("  health:\n    successThreshold: " + "9" * 5000 + "\n"),
}


def test_spec_validate_exits_2_without_a_traceback_for_every_hostile_file(
        tmp_path: Path) -> None:
    for name, text in HOSTILE.items():
        path = tmp_path / "spec.yaml"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        result = subprocess.run([*KRUXOS, "spec", "validate", str(path)], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, (name, result.stderr)
        assert result.stderr.startswith(f"error: {path}"), (name, result.stderr)
        assert len(result.stderr) < 2000 and "s3cr3t" not in result.stderr, name
        assert _printable_only(result.stderr), (name, result.stderr)


# ---- reading the file once -----------------------------------------------------------------

class Counting:
    """Counts calls of a real function of the reader, which still does its work."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls = 0
        real = getattr(specfile, name)

        def counted(*args: object) -> object:
            self.calls += 1
            return real(*args)
        monkeypatch.setattr(specfile, name, counted)


def _age(path: Path, seconds: float = 60) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_an_unchanged_spec_file_is_read_once_and_validated_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(BASE)
    _age(path)
    reads, parses = Counting(monkeypatch, "_read_head"), Counting(monkeypatch, "parse_spec")
    keeper = SpecKeeper(path, tmp_path)
    first = keeper.refresh()
    for _ in range(50):
        assert keeper.refresh() is first
    assert (reads.calls, parses.calls) == (1, 1)

    _age(path, 30)  # touched, same bytes: read again, not validated again
    assert keeper.refresh() is first
    assert (reads.calls, parses.calls) == (2, 1)

    path.write_text(BASE.replace("1.0.1", "1.0.2"))
    _age(path)
    loaded, error = keeper.refresh()
    assert error is None and loaded is not None and loaded.policy.spec.version == "1.0.2"
    assert (reads.calls, parses.calls) == (3, 2)


def test_a_file_changed_just_now_is_hashed_again_but_not_revalidated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(BASE)
    _age(path, -30)  # changed "just now" (however slow this machine): its stat is not trusted
    reads, parses = Counting(monkeypatch, "_read_head"), Counting(monkeypatch, "parse_spec")
    keeper = SpecKeeper(path, tmp_path)
    keeper.refresh()
    keeper.refresh()
    assert (reads.calls, parses.calls) == (2, 1)
    size = path.stat().st_size
    stamp = path.stat().st_mtime_ns
    path.write_text(BASE.replace("1.0.1", "2.0.1"))  # same size, same mtime
    os.utime(path, ns=(stamp, stamp))
    assert path.stat().st_size == size
    loaded, _ = keeper.refresh()
    assert loaded is not None and loaded.policy.spec.version == "2.0.1"


def test_a_rejected_file_keeps_the_last_good_spec_and_names_its_own_revision(
        tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(BASE)
    keeper = SpecKeeper(path, tmp_path)
    keeper.refresh()
    bad = BASE + billion_laughs()
    path.write_text(bad)
    loaded, error = keeper.refresh()
    assert error is not None and "aliases expanded" in str(error)
    assert loaded is not None and loaded.revision == revision_of(BASE.encode())
    assert keeper.file_revision == revision_of(bad.encode())
    path.write_text(BASE + "# " + "x" * 9_600_000 + "\n")
    loaded, error = keeper.refresh()
    assert error is not None and "larger than 256 KiB" in str(error)
    assert keeper.file_revision not in (None, revision_of(bad.encode()))


def test_a_kept_copy_that_no_longer_validates_is_no_spec_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / LAST_GOOD).write_text(_with("  suspend: 'false'\n"))  # the old loose form
    path = tmp_path / "spec.yaml"
    path.write_text("kind: [\n")
    loaded, error = SpecKeeper(path, tmp_path).refresh()
    assert loaded is None and error is not None


@pytest.mark.parametrize("text", ["a: 1\n" + "? " * 16 + "\n",
                                  "apiVersion: kruxos.io/v1\n? kind\n: UpdatePolicy\n",
                                  "spec: {? version: 1.0.0}\n"])
def test_explicit_keys_are_refused_before_the_parser_can_take_exponential_time(
        text: str) -> None:
    with pytest.raises(SpecError, match=r"explicit mapping keys \('\? \.\.\.'\) are not allowed"):
        specfile.parse_spec(text.encode(), Path("q.yaml"))


@pytest.mark.parametrize("text", [
    "apiVersion: kruxos.io/v1\nkind: UpdatePolicy\nspec:\n  channel:\n%YAML 1.3\n    url: x\n",
    "%TAG ! tag:example.com,2000:\n---\na: 1\n",
    "a: 1\n%YAML 1.2\n",
])
def test_a_directive_anywhere_is_refused_with_a_spec_error(text: str) -> None:
    with pytest.raises(SpecError, match=r"remove the %(YAML)? ?directive"):
        specfile.parse_spec(text.encode(), Path("q.yaml"))
