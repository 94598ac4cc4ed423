"""Jurisdiction codes and their containment.

A region is an ISO 3166-1 alpha-2 country (``DE``), an ISO 3166-2 subdivision (``US-CA``), a
grouping (``EU``, ``EEA``, ``EFTA``) or ``GLOBAL``. Containment: a subdivision is inside its
country, a country inside every grouping that lists it, ``EU`` inside ``EEA``, and everything
inside ``GLOBAL``. Subdivision codes are checked for shape and for a valid country part only
(the full ISO 3166-2 list changes every year).
"""

import re
from functools import lru_cache

from agent_passport.errors import RegionError

COUNTRIES = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW
    GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY
    KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV
    MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG
    TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()
)

EU = frozenset(
    "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split()
)
EFTA = frozenset("IS LI NO CH".split())
EEA = EU | frozenset("IS LI NO".split())

GLOBAL = "GLOBAL"
GROUPINGS: dict[str, frozenset[str]] = {"EU": EU, "EEA": EEA, "EFTA": EFTA, GLOBAL: COUNTRIES}

# What normalization trims: str.strip() would also trim \x1c-\x1f, which other languages' trim()
# keeps, and a code must be valid in every SDK or in none.
ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
_SUBDIVISION = re.compile(r"^([A-Z]{2})-[A-Z0-9]{1,3}$")


def normalize_region(code: str) -> str:
    """Return the canonical (upper-case) form of ``code`` or raise :class:`RegionError`."""
    if not isinstance(code, str):
        raise RegionError(repr(code), "a region must be a string")
    if not code.isascii():  # str.upper() would turn e.g. "ß" into "SS" (South Sudan)
        raise RegionError(code, "region codes are ASCII letters, digits and '-'")
    canonical = code.strip(ASCII_WHITESPACE).upper()
    if canonical in GROUPINGS or canonical in COUNTRIES:
        return canonical
    match = _SUBDIVISION.match(canonical)
    if match and match.group(1) in COUNTRIES:
        return canonical
    if match:
        raise RegionError(code, f"unknown country {match.group(1)!r} in subdivision code")
    raise RegionError(
        code,
        "not a region: use an ISO 3166 country (DE), a subdivision (US-CA), "
        f"or one of {', '.join(sorted(GROUPINGS))}",
    )


@lru_cache(maxsize=4096)
def _countries_of(region: str) -> frozenset[str]:
    """The set of countries a (normalized) region covers; a subdivision covers part of one."""
    if region in GROUPINGS:
        return GROUPINGS[region]
    return frozenset({region.split("-", 1)[0]})


@lru_cache(maxsize=65536)
def region_within(inner: str, outer: str) -> bool:
    """True if every place in ``inner`` is also in ``outer`` (both normalized)."""
    if inner == outer or outer == GLOBAL:
        return True
    if "-" in outer:  # a subdivision contains only itself
        return False
    return _countries_of(inner) <= _countries_of(outer)
