"""The ranking's method values the participant page sends (study client, Fig. S7)."""

from __future__ import annotations

import pydantic
import pytest

from fergi.study.web._routes_answers import RankingRequest


@pytest.mark.parametrize("method", ["drag", "keyboard", "tap", "mixed", "untouched"])
def test_every_method_the_page_sends_is_accepted(method):
    assert RankingRequest(order=[2, 1], method=method).method == method


def test_an_unknown_method_is_refused():
    with pytest.raises(pydantic.ValidationError):
        RankingRequest(order=[2, 1], method="swipe")
