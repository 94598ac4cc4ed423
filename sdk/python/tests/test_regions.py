"""Tests for jurisdiction codes and their containment (agent_passport.regions). No database."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_passport.errors import RuleError
from agent_passport.regions import (
    COUNTRIES,
    EEA,
    EFTA,
    EU,
    GLOBAL,
    GROUPINGS,
    normalize_region,
    region_within,
)

PROPERTY = settings(max_examples=200, deadline=None)

SUBDIVISIONS = ["US-CA", "US-NY", "DE-BY", "DE-BE", "FR-75", "GB-ENG", "NO-03", "CH-ZH", "JP-13"]
GROUPING_CODES = sorted(GROUPINGS)
SAMPLE = sorted(
    {*GROUPING_CODES, *SUBDIVISIONS, "US", "DE", "FR", "GB", "NO", "IS", "LI", "CH", "JP", "AT"}
)
ALL_CODES = sorted({*COUNTRIES, *GROUPINGS, *SUBDIVISIONS})

countries = st.sampled_from(sorted(COUNTRIES))
codes = st.sampled_from(ALL_CODES)
subdivisions = st.builds(
    lambda country, suffix: f"{country}-{suffix}",
    countries,
    st.from_regex(r"[A-Z0-9]{1,3}", fullmatch=True),
)
any_region = st.one_of(codes, subdivisions)


def random_case(text: str, flips: list[bool]) -> str:
    return "".join(c.lower() if flip else c for c, flip in zip(text, flips, strict=False))


# --------------------------------------------------------------------------------------------
# Reference data sanity
# --------------------------------------------------------------------------------------------


def test_reference_data():
    assert len(EU) == 27
    assert len(EFTA) == 4
    assert len(EEA) == 30
    assert EU <= COUNTRIES
    assert EFTA <= COUNTRIES
    assert EEA == EU | {"IS", "LI", "NO"}
    assert not EU & EFTA
    assert "GB" not in EU
    assert "CH" not in EEA
    assert GROUPINGS[GLOBAL] == COUNTRIES
    assert all(re.fullmatch(r"[A-Z]{2}", c) for c in COUNTRIES)
    assert not set(GROUPINGS) & COUNTRIES


# --------------------------------------------------------------------------------------------
# normalize_region
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("DE", "DE"),
        ("de", "DE"),
        ("De", "DE"),
        (" de\n", "DE"),
        ("eu", "EU"),
        ("eea", "EEA"),
        ("Efta", "EFTA"),
        ("global", "GLOBAL"),
        ("GLOBAL", "GLOBAL"),
        ("us-ca", "US-CA"),
        ("US-CA", "US-CA"),
        ("gb-eng", "GB-ENG"),
        ("fr-75", "FR-75"),
        ("de-b", "DE-B"),
    ],
)
def test_normalize_region_valid(code, expected):
    assert normalize_region(code) == expected


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("", "not a region"),
        ("   ", "not a region"),
        ("XX", "not a region"),
        ("UK", "not a region"),  # the ISO code is GB
        ("USA", "not a region"),
        ("U", "not a region"),
        ("Europe", "not a region"),
        ("US-", "not a region"),
        ("US-CALI", "not a region"),
        ("US_CA", "not a region"),
        ("US CA", "not a region"),
        ("-CA", "not a region"),
        ("US-C-A", "not a region"),
        ("XX-CA", "unknown country 'XX'"),
        ("eu-1", "unknown country 'EU'"),
        ("GLOBAL-1", "not a region"),
    ],
)
def test_normalize_region_invalid_names_the_code(code, hint):
    with pytest.raises(RuleError) as info:
        normalize_region(code)
    assert info.value.rule == code
    assert str(info.value).startswith(f"invalid region {code!r}: ")
    assert hint in str(info.value)


def test_normalize_region_invalid_lists_the_groupings():
    with pytest.raises(RuleError) as info:
        normalize_region("Mars")
    assert "EEA, EFTA, EU, GLOBAL" in str(info.value)


@pytest.mark.parametrize("code", [None, 49, b"DE", ["DE"]])
def test_normalize_region_non_string(code):
    with pytest.raises(RuleError) as info:
        normalize_region(code)
    assert info.value.rule == repr(code)
    assert "must be a string" in str(info.value)


@pytest.mark.parametrize("code", ["ß", "ﬁ", "\u0131t", "\u017fe"])
def test_normalize_region_rejects_non_ascii_lookalikes(code):
    with pytest.raises(RuleError):
        normalize_region(code)


@PROPERTY
@given(code=st.sampled_from(sorted(COUNTRIES | set(GROUPINGS))), data=st.data())
def test_prop_lower_and_mixed_case_normalizes(code, data):
    flips = data.draw(st.lists(st.booleans(), min_size=len(code), max_size=len(code)))
    padding = data.draw(st.sampled_from(["", " ", "\t", "\n", "  "]))
    assert normalize_region(code.lower()) == code
    assert normalize_region(random_case(code, flips)) == code
    assert normalize_region(f"{padding}{code.lower()}{padding}") == code


@PROPERTY
@given(code=subdivisions)
def test_prop_subdivision_lower_case_normalizes(code):
    assert normalize_region(code.lower()) == code
    assert normalize_region(code) == code


@PROPERTY
@given(code=any_region)
def test_prop_normalize_is_idempotent(code):
    once = normalize_region(code.lower())
    assert normalize_region(once) == once


@PROPERTY
@given(text=st.text(max_size=12))
def test_prop_normalize_only_raises_rule_error_and_returns_canonical(text):
    try:
        result = normalize_region(text)
    except RuleError as exc:
        assert exc.rule == text
        return
    assert result == result.upper()
    assert result == result.strip()
    assert (
        result in COUNTRIES
        or result in GROUPINGS
        or (re.fullmatch(r"[A-Z]{2}-[A-Z0-9]{1,3}", result) and result[:2] in COUNTRIES)
    )


@PROPERTY
@given(
    text=st.text(
        st.characters(min_codepoint=ord("A"), max_codepoint=ord("Z")), min_size=2, max_size=2
    )
)
def test_prop_two_letter_codes_valid_iff_iso_country_or_grouping(text):
    if text in COUNTRIES or text in GROUPINGS:
        assert normalize_region(text) == text
    else:
        with pytest.raises(RuleError):
            normalize_region(text)


# --------------------------------------------------------------------------------------------
# region_within
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inner", "outer", "expected"),
    [
        ("DE", "EU", True),
        ("DE", "EEA", True),
        ("DE", "EFTA", False),
        ("DE", "DE", True),
        ("DE", "FR", False),
        ("DE", "GLOBAL", True),
        ("NO", "EEA", True),
        ("NO", "EFTA", True),
        ("NO", "EU", False),
        ("CH", "EFTA", True),
        ("CH", "EEA", False),
        ("GB", "EU", False),
        ("US", "EU", False),
        ("EU", "EEA", True),
        ("EEA", "EU", False),
        ("EFTA", "EEA", False),
        ("EEA", "EFTA", False),
        ("EU", "EFTA", False),
        ("EU", "DE", False),
        ("EU", "GLOBAL", True),
        ("GLOBAL", "EU", False),
        ("GLOBAL", "US", False),
        ("GLOBAL", "GLOBAL", True),
        ("US-CA", "US", True),
        ("US-CA", "US-CA", True),
        ("US", "US-CA", False),
        ("US-CA", "US-NY", False),
        ("US-CA", "CA", False),  # CA is Canada, not California
        ("US-CA", "EU", False),
        ("US-CA", "GLOBAL", True),
        ("DE-BY", "DE", True),
        ("DE-BY", "EU", True),
        ("DE-BY", "EEA", True),
        ("DE-BY", "EFTA", False),
        ("CH-ZH", "EFTA", True),
        ("CH-ZH", "EEA", False),
        ("EU", "DE-BY", False),
        ("GLOBAL", "US-CA", False),
    ],
)
def test_region_within(inner, outer, expected):
    assert region_within(inner, outer) is expected


@pytest.mark.parametrize("code", ALL_CODES)
def test_containment_is_reflexive(code):
    assert region_within(code, code)


def test_containment_is_transitive_over_sample():
    checked = 0
    for a in SAMPLE:
        for b in SAMPLE:
            if not region_within(a, b):
                continue
            for c in SAMPLE:
                if region_within(b, c):
                    checked += 1
                    assert region_within(a, c), (a, b, c)
    assert checked > len(SAMPLE)  # the sample really contains chains


def test_containment_is_antisymmetric_over_sample():
    for a in SAMPLE:
        for b in SAMPLE:
            if a != b:
                assert not (region_within(a, b) and region_within(b, a)), (a, b)


@PROPERTY
@given(a=any_region, b=any_region, c=any_region)
def test_prop_containment_is_transitive(a, b, c):
    if region_within(a, b) and region_within(b, c):
        assert region_within(a, c)


@PROPERTY
@given(code=any_region)
def test_prop_reflexive_and_global_contains_everything(code):
    assert region_within(code, code)
    assert region_within(code, GLOBAL)
    if code != GLOBAL:
        assert not region_within(GLOBAL, code)


@pytest.mark.parametrize("country", sorted(EU))
def test_every_eu_country_is_within_eu_eea_and_global(country):
    assert region_within(country, "EU")
    assert region_within(country, "EEA")
    assert region_within(country, GLOBAL)
    assert not region_within(country, "EFTA")
    assert not region_within("EU", country)


@pytest.mark.parametrize("country", sorted(EEA - EU))
def test_non_eu_eea_countries(country):
    assert region_within(country, "EEA")
    assert region_within(country, "EFTA")
    assert not region_within(country, "EU")


@PROPERTY
@given(code=subdivisions, other=countries)
def test_prop_subdivision_within_its_country_only(code, other):
    country = code.split("-", 1)[0]
    assert region_within(code, country)
    assert not region_within(country, code)
    assert region_within(code, other) is (other == country)
    for name, members in GROUPINGS.items():
        assert region_within(code, name) is (country in members)


@PROPERTY
@given(code=subdivisions, other=subdivisions)
def test_prop_subdivision_contains_only_itself(code, other):
    assert region_within(other, code) is (other == code)


@PROPERTY
@given(country=countries)
def test_prop_country_within_grouping_iff_member(country):
    for name, members in GROUPINGS.items():
        assert region_within(country, name) is (country in members)
        if name != GLOBAL:
            assert not region_within(name, country)
