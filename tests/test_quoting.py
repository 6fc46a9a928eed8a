"""Quoting a value in a message: the limit counts what is shown, escapes included."""

from __future__ import annotations

import pytest

from reconciler.quoting import excerpt


@pytest.mark.parametrize("text", ["\udcff" * 300, "\x1b" * 300, "\U0001f600\x00" * 200,
                                  "'" * 300, "a" * 300])
def test_a_quote_is_never_longer_than_its_limit_whatever_it_escapes(text: str) -> None:
    shown = excerpt(text, 80)
    assert len(shown) <= 80 + len("''...")
    assert shown.endswith("...")


def test_a_short_value_is_shown_whole_and_escaped() -> None:
    assert excerpt("off") == "'off'"
    assert excerpt("it's") == "'it\\'s'"
    assert excerpt("a\nb\x1b[31m") == "'a\\nb\\x1b[31m'"


def test_a_cut_never_splits_an_escape() -> None:
    shown = excerpt("ab" + "\udcff" * 50, 12)
    assert shown == "'ab\\udcff'..."
