"""Issuing-state and nationality codes of machine readable travel documents.

An MRZ names the issuing state (or organisation) and the holder's nationality with a three-letter code: the
ISO 3166-1 alpha-3 codes (taken from pycountry) plus the codes ICAO adds in Doc 9303 Part 3, section 5,
listed below with their names. Germany is the odd one out: it writes ``D`` (padded to ``D<<`` in the MRZ)
rather than ``DEU``; both are accepted and kept as written, since the register stores what the document says.

``UTO`` (Utopia) is the fictional state of the specimens printed in Doc 9303. It is accepted so specimens
parse, and flagged by :func:`is_specimen_state` so a real register can refuse to store it.
"""

from __future__ import annotations

from functools import lru_cache
from types import MappingProxyType

import pycountry

__all__ = [
    "CANONICAL_STATES",
    "ICAO_STATES",
    "KNOWN_STATES",
    "SPECIMEN_STATE",
    "StateCodeError",
    "canonical_state",
    "is_known_state",
    "is_specimen_state",
    "state_name",
]

#: The fictional issuing state of the Doc 9303 specimens.
SPECIMEN_STATE = "UTO"

#: Codes that Doc 9303 Part 3 adds to ISO 3166-1 alpha-3, with their names.
ICAO_STATES: MappingProxyType[str, str] = MappingProxyType(
    {
        "D": "Germany",
        # British nationality categories other than British citizen (GBR).
        "GBD": "British Overseas Territories Citizen",
        "GBN": "British National (Overseas)",
        "GBO": "British Overseas Citizen",
        "GBP": "British Protected Person",
        "GBS": "British Subject",
        "RKS": "Kosovo",
        "EUE": "European Union",
        "UNO": "United Nations Organization",
        "UNA": "Specialized agency of the United Nations",
        "UNK": "Resident of Kosovo (travel document issued by UNMIK)",
        "XBA": "African Development Bank",
        "XIM": "African Export-Import Bank",
        "XCC": "Caribbean Community",
        "XCE": "Council of Europe",
        "XCO": "Common Market for Eastern and Southern Africa",
        "XEC": "Economic Community of West African States",
        "XPO": "International Criminal Police Organization",
        "XES": "Organisation of Eastern Caribbean States",
        "XMP": "Parliamentary Assembly of the Mediterranean",
        "XOM": "Sovereign Military Order of Malta",
        "XDC": "Southern African Development Community",
        "XXA": "Stateless person",
        "XXB": "Refugee (1951 Convention)",
        "XXC": "Refugee (other than under the 1951 Convention)",
        "XXX": "Unspecified nationality",
    }
)


def _iso_names() -> dict[str, str]:
    return {country.alpha_3: getattr(country, "common_name", None) or country.name for country in pycountry.countries}


_NAMES: dict[str, str] = {**_iso_names(), **ICAO_STATES, SPECIMEN_STATE: "Utopia (specimen)"}

#: Every code accepted as an issuing state or nationality.
KNOWN_STATES: frozenset[str] = frozenset(_NAMES)


class StateCodeError(ValueError):
    """An issuing-state or nationality code that is empty or not in :data:`KNOWN_STATES`."""


def _normalise(code: str) -> str:
    # Upper-case ASCII only: str.upper() would turn a dotless "ı" into "I" and accept a code never printed.
    stripped = code.strip()
    return (stripped.upper() if stripped.isascii() else stripped).strip("<")


@lru_cache(maxsize=4096)  # every check and uploaded row asks; a deployment sees a few hundred spellings
def canonical_state(code: str) -> str:
    """The code as printed, without fillers: ``"utO"`` -> ``"UTO"``, ``"D<<"`` -> ``"D"``.

    Raises :class:`StateCodeError` when the code is empty or unknown.
    """
    canonical = _normalise(code)
    if not canonical:
        raise StateCodeError(f"empty issuing state or nationality code: {code!r}")
    if canonical not in KNOWN_STATES:
        raise StateCodeError(f"unknown issuing state or nationality code: {canonical!r}")
    return _ALIASES.get(canonical, canonical)


# Codes that name the same state as another: the register keys on the form Doc 9303 prints in MRZs, so a
# typed ISO code (DEU) finds records reported under the MRZ code (D) and the other way round.
_ALIASES: dict[str, str] = {"DEU": "D"}

#: The codes :func:`canonical_state` gives back: every known code but those that name a state under another one.
CANONICAL_STATES: frozenset[str] = frozenset(code for code in KNOWN_STATES if canonical_state(code) == code)


def is_known_state(code: str) -> bool:
    """Whether ``code`` (raw or canonical) is an accepted code; never raises."""
    return isinstance(code, str) and _normalise(code) in KNOWN_STATES


def state_name(code: str) -> str:
    """English name of a state or organisation code: ``"NZL"`` -> ``"New Zealand"``."""
    return _NAMES[canonical_state(code)]


def is_specimen_state(code: str) -> bool:
    """True only for ``UTO``, the fictional state of the Doc 9303 specimens; never raises."""
    return isinstance(code, str) and _normalise(code) == SPECIMEN_STATE
