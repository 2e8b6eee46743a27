"""Speed of the ICAO core: MRZ parse-and-check and document-number folding.

Targets (one core): parse and check a TD3 MRZ at 50,000+/s; folded key of a document number at 500,000+/s.
Run with ``.venv/bin/pytest bench/test_bench_icao.py --benchmark-only -q``.
"""

from __future__ import annotations

import datetime

from idcheck.icao import MRZFormat, canonical_number, compose_mrz, folded_key, parse_mrz

TODAY = datetime.date(2025, 6, 1)
TD3 = "\n".join(
    compose_mrz(
        MRZFormat.TD3,
        document_type="P",
        issuing_state="UTO",
        document_number="L898902C3",
        nationality="UTO",
        birth_date="740812",
        sex="F",
        expiry_date="120415",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
        optional_data="ZE184226B",
    )
)
TD1 = [
    "I<UTOD23145890<7349<<<<<<<<<<<",
    "3407127M9507122UTO<<<<<<<<<<<2",
    "STEVENSON<<PETER<JOHN<<<<<<<<<",
]


def test_bench_parse_td3(benchmark) -> None:
    mrz = benchmark(parse_mrz, TD3, today=TODAY)
    assert mrz.valid
    assert mrz.document_number == "L898902C3"


def test_bench_parse_td3_default_today(benchmark) -> None:
    assert benchmark(parse_mrz, TD3).valid


def test_bench_parse_td1_long_number(benchmark) -> None:
    mrz = benchmark(parse_mrz, TD1, today=TODAY)
    assert mrz.valid
    assert mrz.document_number == "D23145890734"


def test_bench_folded_key(benchmark) -> None:
    assert benchmark(folded_key, "L898902C3") == "1898902C3"


def test_bench_canonical_number_then_folded_key(benchmark) -> None:
    assert benchmark(lambda: folded_key(canonical_number("l898-902 c3"))) == "1898902C3"
