"""The demo register: ICAO specimens and reproducible synthetic records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from idcheck.records import validate_record
from idcheck.register import Query, Register, Verdict
from idcheck.register.demo import DEMO_MEMBERS, SPECIMENS, seed_demo, synthetic_records
from idcheck.synthetic import distinct_numbers, synthetic_numbers
from tests.register.conftest import BORDER

TODAY = dt.date(2025, 6, 1)
TD3_SPECIMEN = "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10"


def test_synthetic_records_are_reproducible_for_a_seed() -> None:
    first = list(synthetic_records(200, member="NZL", pattern="LL######", seed=7, today=TODAY))
    again = list(synthetic_records(200, member="NZL", pattern="LL######", seed=7, today=TODAY))
    other = list(synthetic_records(200, member="NZL", pattern="LL######", seed=8, today=TODAY))
    assert first == again
    assert first != other


def test_synthetic_records_have_distinct_numbers_of_the_pattern() -> None:
    for member, pattern in DEMO_MEMBERS:
        rows = list(synthetic_records(500, member=member, pattern=pattern, seed=1, today=TODAY))
        assert len(rows) == 500
        assert len({r.document_number for r in rows}) == 500
        for r in rows:
            assert r.issuing_state == member
            assert len(r.document_number) == len(pattern)
            assert all((c == "L") == ch.isalpha() for c, ch in zip(pattern, r.document_number, strict=True))


def test_synthetic_records_all_pass_validation() -> None:
    rows = list(synthetic_records(300, member="FJI", pattern="L#######", seed=3, today=TODAY))
    for r in rows:
        validate_record(**dataclasses.asdict(r), today=TODAY)  # raises RecordError naming the bad field
    assert {r.status for r in rows} <= {1, 2, 3, 4, 5}
    assert all(r.event_date <= TODAY.isoformat() for r in rows)


def test_seed_demo_lists_the_specimens_and_every_member(register: Register) -> None:
    outcomes = seed_demo(register, per_member=20)
    assert [o.rejected for o in outcomes] == [0] * (1 + len(DEMO_MEMBERS))
    assert [o.created for o in outcomes] == [len(SPECIMENS)] + [20] * len(DEMO_MEMBERS)
    assert len(register.index) == len(SPECIMENS) + 20 * len(DEMO_MEMBERS)
    results, _ = register.check(
        BORDER,
        [
            Query("UTO", "L898902C3", 1),
            Query("UTO", "D23145890", 2),
            Query("UTO", "L8988901C", 3),
            Query(mrz=TD3_SPECIMEN),
        ],
    )
    assert [r.verdict for r in results] == [Verdict.HIT] * 4
    passport = results[0]
    assert passport.matches[0].record.owner == "UTO"
    assert passport.matches[0].record.data.status.name == "STOLEN"
    assert "Utopia national contact point" in passport.officer_action
    assert "check digit" not in results[3].officer_action


def test_seed_demo_twice_changes_nothing(register: Register) -> None:
    seed_demo(register, per_member=10)
    sequence = register.sequence
    assert all(o.replayed for o in seed_demo(register, per_member=10))
    assert register.sequence == sequence


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.text(
        alphabet="L#", min_size=1, max_size=16
    ),  # beyond 14 letters the packed integer would overflow: np.unique
    n=st.integers(0, 3000),
    extra=st.integers(0, 500),
    seed=st.integers(0, 2**32 - 1),
)
def test_distinct_numbers_are_the_sorted_distinct_numbers_of_the_draw(
    pattern: str, n: int, extra: int, seed: int
) -> None:
    draw = n + extra
    drawn = synthetic_numbers(pattern, draw, np.random.default_rng(seed))
    assert drawn.dtype == np.dtype(f"S{len(pattern)}") and len(drawn) == draw
    assert all(re.fullmatch(pattern.replace("L", "[A-HJ-NPR-Y]").replace("#", "[0-9]"), v.decode()) for v in drawn[:50])
    got = distinct_numbers(pattern, n, np.random.default_rng(seed), draw=draw)
    assert got.tolist() == np.unique(drawn)[:n].tolist()
