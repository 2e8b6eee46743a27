"""Classes of travel document, from the Doc 9303 document code."""

from __future__ import annotations

import enum

__all__ = ["DocumentClass", "document_class"]


class DocumentClass(enum.IntEnum):
    """Broad class of a machine readable travel document."""

    UNSPECIFIED = 0
    PASSPORT = 1
    ID_CARD = 2
    VISA = 3
    OTHER = 4


# First letter of the document code -> class. TD1 and TD2 official travel documents start with I, A or C
# (Doc 9303 Parts 5 and 6); passports with P (Part 4); visas with V (Part 7).
_BY_FIRST_LETTER = {
    "P": DocumentClass.PASSPORT,
    "V": DocumentClass.VISA,
    "I": DocumentClass.ID_CARD,
    "A": DocumentClass.ID_CARD,
    "C": DocumentClass.ID_CARD,
}


def document_class(document_type: str) -> DocumentClass:
    """Class of a document code such as ``"P"``, ``"PN"``, ``"ID"``, ``"AC"`` or ``"V<"``."""
    code = document_type.strip().strip("<")
    if not code:
        return DocumentClass.UNSPECIFIED
    return _BY_FIRST_LETTER.get(code[0].upper(), DocumentClass.OTHER)
