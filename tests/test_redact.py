"""The one redaction function: what it masks, and what it leaves alone."""

from __future__ import annotations

import io
import json
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from reconciler.redact import MASK, RedactingStream, redact, redact_json, register_secret


@pytest.mark.parametrize(("text", "expected"), [
    ("channel: http://ops:Hunter2x@chan.example/metadata.json answered HTTP 500",
     "channel: http://ops:***@chan.example/metadata.json answered HTTP 500"),
    ("https://tok3n@chan.example:8443/", "https://***@chan.example:8443/"),
    ("Authorization: Basic ZGV2aWNlOnB3", "Authorization: ***"),
    ('{"authorization": "Bearer abc.def"}', '{"authorization": "***"}'),
    ("sent Bearer eyJhbGciOiJFZERTQSJ9.x", "sent Bearer ***"),
])
def test_userinfo_authorization_headers_and_bearer_tokens_are_masked(
    text: str, expected: str,
) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "slot B (sda3) runs 1.0.1, as the spec wants",
    "mail ops@example.com about http://chan.example/stable/",
    "the basic health check passed",
    "channel: http://[::1 is not a URL",
])
def test_text_without_secrets_is_left_exactly_as_it_was(text: str) -> None:
    assert redact(text) == text


def test_a_registered_secret_is_masked_wherever_it_appears() -> None:
    register_secret("Reg1stered-Secret-q7")
    assert redact("token Reg1stered-Secret-q7 refused; again:Reg1stered-Secret-q7") == \
        f"token {MASK} refused; again:{MASK}"


def test_a_very_short_registered_value_is_not_masked_everywhere() -> None:
    register_secret("ab")
    assert redact("tab about") == "tab about"


def test_json_values_are_redacted_and_stay_json() -> None:
    value = {"url": "http://u:Pw-Zz91@h/", "n": 3, "list": ["Authorization: Basic eA=="]}
    out = redact_json(value)
    assert out == {"url": "http://u:***@h/", "n": 3, "list": ["Authorization: ***"]}
    assert json.loads(json.dumps(out)) == out


def test_a_redacting_stream_masks_every_write() -> None:
    inner = io.StringIO()
    stream = RedactingStream(inner)
    stream.write("error: http://u:Pw-Zz91@h/ failed\n")
    stream.write(b"raw http://u:Pw-Zz91@h/\n")  # type: ignore[arg-type]
    assert inner.getvalue() == "error: http://u:***@h/ failed\nraw http://u:***@h/\n"


_PASSWORD = st.text(alphabet=string.ascii_letters + string.digits + "._~!$&'()*+,;=%-",
                    min_size=8, max_size=64)
_TEXT = st.text(max_size=200)


@settings(max_examples=300, deadline=None, database=None)
@given(prefix=_TEXT, password=_PASSWORD, suffix=_TEXT)
def test_the_password_of_a_url_never_survives_whatever_surrounds_it(
    prefix: str, password: str, suffix: str,
) -> None:
    url = "http://device-17:{}@chan.example:8080/metadata.json"
    assume(password not in prefix + suffix + url.format(""))  # only the password holds it
    text = f"{prefix} {url.format(password)} {suffix}"
    assert password not in redact(text)


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(max_size=2000))
def test_any_text_is_redacted_without_error_and_a_second_pass_changes_nothing(
    text: str,
) -> None:
    once = redact(text)
    assert redact(once) == once
