"""Demo and synthetic registers: the ICAO specimen documents and reproducible synthetic records.

The demo register makes the README examples work on a fresh start (`idcheck serve --demo`); the
synthetic generator feeds benchmarks and tests with realistic keys (several members, number formats
that differ by state, every status) without any real person's data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np

from idcheck.register.register import Caller, RawRecord, Register
from idcheck.synthetic import distinct_numbers
from idcheck.uploads import UploadMode, UploadOutcome

PASSPORT, ID_CARD, VISA = 1, 2, 3
LOST, STOLEN, STOLEN_BLANK, REVOKED, INVALIDATED = 1, 2, 3, 4, 5

# The specimen documents printed in ICAO Doc 9303, reported stolen or lost by Utopia.
SPECIMENS: tuple[RawRecord, ...] = (
    RawRecord(
        "UTO",
        "L898902C3",
        PASSPORT,
        STOLEN,
        "2024-03-01",
        "ERIKSSON",
        "ANNA MARIA",
        "1974-08-12",
        "UTO",
        "2012-04-15",
        "Seize the document and contact the Utopia national contact point.",
    ),
    RawRecord(
        "UTO",
        "D23145890",
        ID_CARD,
        LOST,
        "2024-05-20",
        "ERIKSSON",
        "ANNA MARIA",
        "1974-08-12",
        "UTO",
        "2012-04-15",
        "Verify the holder's identity; the card was reported lost.",
    ),
    RawRecord(
        "UTO",
        "L8988901C",
        VISA,
        REVOKED,
        "2024-06-02",
        "ERIKSSON",
        "ANNA MARIA",
        "1940-09-07",
        "XXX",
        "1996-12-10",
        "Visa revoked: refuse boarding or entry on this visa.",
    ),
)

# Members of the demo federation and the shape of their document numbers.
DEMO_MEMBERS: tuple[tuple[str, str], ...] = (
    ("NZL", "LL######"),  # two letters, six digits
    ("FJI", "L#######"),
    ("WSM", "##########"),
    ("TON", "L######"),
    ("AUS", "L#######"),
)

_STATUSES = np.array([LOST, STOLEN, STOLEN_BLANK, REVOKED, INVALIDATED])
_STATUS_WEIGHTS = np.array([0.55, 0.25, 0.05, 0.1, 0.05])
_CLASSES = np.array([PASSPORT, ID_CARD, VISA])
_CLASS_WEIGHTS = np.array([0.8, 0.15, 0.05])
_SURNAMES = ("TUILAGI", "NAKAMURA", "SMITH", "FONOTI", "KAUFUSI", "WILLIAMS", "RATU", "NGATA", "LEE", "SINGH")
_GIVEN = ("ANA", "JOHN", "MELE", "SIONE", "LOSA", "TEVITA", "MARY", "PITA", "SALOTE", "ARI")


def synthetic_records(
    n: int, *, member: str, pattern: str, seed: int = 0, today: dt.date | None = None
) -> Iterator[RawRecord]:
    """`n` distinct synthetic records of one member (reproducible for a seed)."""
    rng = np.random.default_rng(seed)
    today = today or dt.date.today()
    numbers = distinct_numbers(pattern, n, rng, draw=int(n * 1.05) + 16)
    rng.shuffle(numbers)
    n = len(numbers)
    statuses = rng.choice(_STATUSES, n, p=_STATUS_WEIGHTS)
    classes = rng.choice(_CLASSES, n, p=_CLASS_WEIGHTS)
    event_age = rng.integers(0, 3650, n)
    birth_age = rng.integers(18 * 365, 80 * 365, n)
    names = rng.integers(0, len(_SURNAMES), (n, 2))
    for i in range(n):
        blank = statuses[i] == STOLEN_BLANK
        yield RawRecord(
            issuing_state=member,
            document_number=numbers[i].decode(),
            document_class=int(classes[i]),
            status=int(statuses[i]),
            event_date=(today - dt.timedelta(days=int(event_age[i]))).isoformat(),
            surname="" if blank else _SURNAMES[names[i, 0]],
            given_names="" if blank else _GIVEN[names[i, 1]],
            birth_date="" if blank else (today - dt.timedelta(days=int(birth_age[i]))).isoformat(),
            nationality="" if blank else member,
        )


def seed_demo(register: Register, *, per_member: int = 1000) -> list[UploadOutcome]:
    """Fill an empty register with the specimens and `per_member` synthetic records of each demo member."""
    outcomes = [_upload(register, "UTO", "demo-specimens", list(SPECIMENS))]
    for i, (member, pattern) in enumerate(DEMO_MEMBERS):
        rows = list(synthetic_records(per_member, member=member, pattern=pattern, seed=100 + i))
        outcomes.append(_upload(register, member, f"demo-{member.lower()}", rows))
    return outcomes


def _upload(register: Register, member: str, upload_id: str, rows: list[RawRecord]) -> UploadOutcome:
    session = register.begin_upload(Caller(member, "member", "demo"), upload_id, UploadMode.INCREMENTAL, "demo data")
    for start in range(0, len(rows), register.limits.max_records_per_batch):
        session.add(rows[start : start + register.limits.max_records_per_batch])
    return session.commit()
