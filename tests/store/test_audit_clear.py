"""Packed plain-CLEAR documents (AuditClear): stored as one row per manifest call, read back as ordinary rows."""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idcheck.store import AuditCall, AuditClear, AuditDocument, AuditRow, AuditWriter, RegisterStore, utc_now
from idcheck.store.schema import SCHEMA_VERSION, migrate
from idcheck.store.sqlite import _pack_clear

MEMBERS = ("NZL", "AUS", "GBR")
TIMES = tuple(f"2026-01-0{d}T00:00:00.000Z" for d in range(1, 5))
BOUNDS = ("0000-01-01T00:00:00.000Z", *TIMES, "2026-01-02T12:00:00.000Z", "9999-12-31T23:59:59.999Z")
# Values that need escaping in JSON, or are not ASCII: packed, they must still read back exactly.
AWKWARD = ('L"A1', "LA\\1", "ÉTÉ1", "N°7", "😀", "A\tB", "\x7f", "")


@dataclass(frozen=True)
class Doc:
    kind: str
    state: str
    number: str
    verdict: str
    matched: str
    subject: str = ""

    @property
    def plain_clear(self) -> bool:
        return (self.kind, self.verdict, self.matched, self.subject) == ("typed", "CLEAR", "", "")


@dataclass(frozen=True)
class Call:
    uid: str
    at: str
    member: str
    single: bool
    docs: tuple[Doc, ...]
    packed: tuple[bool, ...]  # per document: packed (only plain CLEARs of a manifest are)
    arrow: bool = False  # packed states and numbers handed over as Arrow arrays rather than lists


def audit_items(call_id: int, call: Call, *, packing: bool) -> tuple[AuditCall, list[AuditDocument], AuditClear | None]:
    """The call as the register submits it: packed plain CLEARs when `packing`, every document a row otherwise."""
    head = AuditCall(call_id, call.uid, call.at, call.member, "border", "peer", 9, len(call.docs), call.single)
    rows, positions, states, numbers = [], [], [], []
    for i, (d, packed) in enumerate(zip(call.docs, call.packed, strict=True)):
        if packing and packed:
            positions.append(i)
            states.append(d.state)
            numbers.append(d.number)
        else:
            rows.append(AuditDocument(call_id, i, d.kind, d.state, d.number, d.verdict, d.matched, d.subject))
    if call.arrow:
        return head, rows, AuditClear(np.array(positions, np.int64), pa.array(states), pa.array(numbers))
    clear = AuditClear(np.array(positions, np.int64), states, numbers) if positions else None
    return head, rows, clear


number = st.one_of(st.from_regex(r"[A-Z0-9]{1,9}", fullmatch=True), st.sampled_from(AWKWARD))
state = st.one_of(st.sampled_from(("NZL", "AUS", "D", "")), st.sampled_from(AWKWARD))


@st.composite
def documents(draw: st.DrawFn, *, single: bool) -> Doc:
    kind = draw(st.sampled_from(("typed", "typed", "typed", "mrz", "verify") if single else ("typed", "typed", "mrz")))
    if kind == "verify":
        verdict = draw(st.sampled_from(("MATCH", "NO_MATCH")))
        return Doc(kind, "", "", verdict, "7" if verdict == "MATCH" else "", draw(st.sampled_from(("", "S1"))))
    verdict = draw(st.sampled_from(("CLEAR", "CLEAR", "CLEAR", "HIT", "POSSIBLE_MATCH")))
    matched = "" if verdict == "CLEAR" else ",".join(map(str, draw(st.lists(st.integers(1, 3), min_size=1))))
    return Doc(kind, draw(state), draw(number), verdict, matched)


@st.composite
def calls(draw: st.DrawFn) -> Call:
    single = draw(st.booleans())
    docs = tuple(draw(st.lists(documents(single=single), min_size=1, max_size=1 if single else 9)))
    packed = tuple(not single and d.plain_clear and draw(st.booleans()) for d in docs)
    at, member = draw(st.sampled_from(TIMES)), draw(st.sampled_from(MEMBERS))
    return Call(uuid.uuid4().hex[:12], at, member, single, docs, packed, not single and draw(st.booleans()))


@st.composite
def histories(draw: st.DrawFn) -> list[list[tuple[int, Call]]]:
    """Batches of (provisional call id, call) as the audit writer hands them over; ids are sometimes out of line."""
    batches, next_id = [], 1
    for batch in draw(st.lists(st.lists(calls(), min_size=1, max_size=3), min_size=1, max_size=5)):
        numbered = []
        for call in batch:
            numbered.append((next_id + draw(st.sampled_from((0, 0, 0, 2, -1))), call))
            next_id += 1
        batches.append(numbered)
    return batches


@st.composite
def filters(draw: st.DrawFn) -> dict[str, object]:
    """A ListAudit query: mostly the filters that read the packed documents (no owner; CLEAR among verdicts)."""
    since, until = sorted(draw(st.lists(st.sampled_from(BOUNDS), min_size=2, max_size=2, unique=True)))
    verdicts = st.lists(st.sampled_from(("CLEAR", "HIT", "POSSIBLE_MATCH", "MATCH", "NO_MATCH")), unique=True)
    return {
        "since": since,
        "until": until,
        "caller_member": draw(st.sampled_from(("", "", *MEMBERS))),
        "owner": draw(st.sampled_from(("",) * 6 + MEMBERS)),
        "verdicts": draw(st.one_of(st.just([]), verdicts, verdicts.map(lambda v: sorted({"CLEAR", *v})))),
        "limit": draw(st.integers(1, 7)),
    }


def add_records(path: Path) -> None:
    """Records 1-3, one per member, so that the owner filter keeps some searches."""
    with sqlite3.connect(path) as conn:
        for rid, owner in enumerate(MEMBERS, start=1):
            conn.execute(
                "INSERT INTO records (record_id, issuing_state, number_canonical, doc_class, number_printed, owner, "
                "status, event_date, recorded_at, seq) VALUES (?, ?, ?, 1, ?, ?, 1, '2026-01-01', '2026-01-01', ?)",
                (rid, owner, f"R{rid}", f"R{rid}", owner, rid),
            )


def all_pages(store: RegisterStore, query: dict[str, object]) -> list[list[tuple[int, int, AuditRow]]]:
    """Every page of a ListAudit query, each as the store returns it; the pages of a store that holds no packed
    document are checked against the query used before packing existed."""
    pages: list[list[tuple[int, int, AuditRow]]] = []
    after = (0, -1)
    limit = query["limit"]
    while True:
        page = store.list_audit(after=after, **query)  # type: ignore[arg-type]
        if store.path.name == "plain.db":
            assert page == reference_page(store.path, query, after)
        pages.append(page)
        if len(page) < limit:  # type: ignore[operator]
            return pages
        assert page[-1][:2] > after, "paging does not move on"
        after = page[-1][:2]


def reference_page(path: Path, query: dict[str, object], after: tuple[int, int]) -> list[tuple[int, int, AuditRow]]:
    """ListAudit as it was before packing (one query over `audit`), for a store that holds no packed document."""
    where = ["c.at >= ?", "c.at < ?", "(a.call_id, a.position) > (?, ?)"]
    params: list[object] = [query["since"], query["until"], *after]
    if query.get("caller_member"):
        where.append("c.caller_member = ?")
        params.append(query["caller_member"])
    if query.get("owner"):
        where.append(
            "a.matched_records <> '' AND CASE WHEN a.query_kind IN ('verify', 'identify') "
            "THEN EXISTS (SELECT 1 FROM json_each('[' || a.matched_records || ']') AS j "
            "JOIN template_changes AS t ON t.seq = j.value WHERE t.op = 'ENROLLED' AND t.actor = ?) "
            "ELSE EXISTS (SELECT 1 FROM json_each('[' || a.matched_records || ']') AS j "
            "JOIN records AS r ON r.record_id = j.value WHERE r.owner = ?) END"
        )
        params.extend((query["owner"], query["owner"]))
    verdicts = query.get("verdicts") or []
    if verdicts:
        where.append(f"a.verdict IN ({','.join('?' * len(verdicts))})")  # type: ignore[arg-type]
        params.extend(verdicts)  # type: ignore[arg-type]
    params.append(query["limit"])
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT a.call_id, a.position, CASE WHEN c.single THEN c.call_uid ELSE c.call_uid || '-' || a.position "
            "END, c.at, c.caller_member, c.caller_role, c.peer, a.query_kind, a.issuing_state, a.document_number, "
            "a.verdict, a.matched_records, c.register_seq, a.subject_id "
            "FROM audit_calls AS c JOIN audit AS a ON a.call_id = c.call_id "
            f"WHERE {' AND '.join(where)} ORDER BY a.call_id, a.position LIMIT ?",
            params,
        ).fetchall()
    return [(r[0], r[1], AuditRow(*r[2:])) for r in rows]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories(), limit=st.integers(1, 7), queries=st.lists(filters(), max_size=6))
def test_packed_clears_read_back_exactly_as_ordinary_rows(
    tmp_path: Path, history: list[list[tuple[int, Call]]], limit: int, queries: list[dict[str, object]]
) -> None:
    where = tmp_path / uuid.uuid4().hex
    packed, plain = RegisterStore(where / "packed.db"), RegisterStore(where / "plain.db")
    try:
        for store, packing in ((packed, True), (plain, False)):
            add_records(store.path)
            for batch in history:
                store.write_audit([audit_items(call_id, call, packing=packing) for call_id, call in batch])
        with sqlite3.connect(packed.path) as conn:  # the property is only worth something if packing happened
            stored = conn.execute("SELECT COALESCE(SUM(count), 0) FROM audit_clear").fetchone()[0]
        assert stored == sum(sum(c.packed) for batch in history for _, c in batch)
        assert packed.audit_count() == plain.audit_count() == sum(len(c.docs) for b in history for _, c in b)
        for limit in (1, 3, 1000):
            assert packed.audit_rows(limit=limit) == plain.audit_rows(limit=limit)
        everything = {"since": BOUNDS[0], "until": BOUNDS[-1], "limit": limit}
        for query in [everything, *queries]:
            assert all_pages(packed, query) == all_pages(plain, query)
        query_ids = [r.query_id for r in plain.audit_rows(limit=-1)]
        query_ids += [query_ids[0] + "-99", query_ids[0].split("-")[0] + "-x", "nope"]
        for query_id in query_ids:
            assert packed.find_audit_row(query_id) == plain.find_audit_row(query_id)
        with sqlite3.connect(packed.path) as a, sqlite3.connect(plain.path) as b:
            view = "SELECT * FROM audit_log ORDER BY call_id, position"
            assert a.execute(view).fetchall() == b.execute(view).fetchall()
    finally:
        packed.close()
        plain.close()


def test_awkward_values_round_trip(tmp_path: Path) -> None:
    store = RegisterStore(tmp_path / "register.db")
    try:
        numbers = ["LA1", *AWKWARD, 'a"b\\c\u2028d\x1fe']
        states = ["NZL", "Ö", '"', "\\", "😀", "", "\x01", "D", "UTO", "GBR"]
        call = AuditCall(1, "u", utc_now(), "NZL", "border", "", 1, len(numbers), False)
        clear = AuditClear(np.arange(len(numbers), dtype=np.int64), states, numbers)
        store.write_audit([(call, [], clear)])
        rows = store.audit_rows()
        assert [(r.issuing_state, r.document_number) for r in rows] == list(zip(states, numbers, strict=True))
        assert store.find_audit_row("u-9")[0].document_number == numbers[9]  # type: ignore[index]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("states", "numbers"),
    [
        (["NZL", "AUS", "", "D"], ["LA1", "E12345678", "X", "0" * 24]),
        (["NZL", "AUS", "", "D"], ["LA1", "E12345678", "X", 'Q"1']),
        (["NZL", "A\\S", "", "D"], ["LA1", "E12345678", "X", "Q1"]),
        (["NZL", "AUS", "É", "D"], ["LA1", "E12345678", "X", "Q1"]),
        (["NZL", "AUS", "", "D"], ["LA1", "E1\x1f", "X", "😀"]),
    ],
)
@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string())])
# Some of a call's documents (the others were more than a plain CLEAR), or all of them (their heads a slice).
@pytest.mark.parametrize("at", [[0, 2, 5, 10_000], [0, 1, 2, 3]])
def test_arrow_columns_are_packed_like_lists(
    states: list[str], numbers: list[str], arrow_type: pa.DataType, at: list[int]
) -> None:
    positions = np.array(at, np.int64)
    as_lists = _pack_clear(AuditClear(positions, states, numbers))
    chunked = pa.chunked_array([numbers[:1], numbers[1:]]).cast(arrow_type)
    as_arrow = _pack_clear(AuditClear(positions, pa.array(states).cast(arrow_type), chunked))
    assert as_lists == as_arrow
    assert as_lists[0] == 4
    assert json.loads(as_lists[1]) == [[p, s, n] for p, s, n in zip(positions.tolist(), states, numbers, strict=True)]


def test_canonical_values_take_the_fast_path_and_give_plain_json() -> None:
    positions = np.array([1, 2, 3, 7], np.int64)
    states, numbers = ["NZL", "", "D", "UTO"], ["LA1234567", "A", "0", "X" * 24]
    count, text = _pack_clear(AuditClear(positions, states, numbers))
    expected = [[p, s, n] for p, s, n in zip(positions.tolist(), states, numbers, strict=True)]
    assert (count, text) == (4, json.dumps(expected, separators=(",", ":")))


@pytest.mark.parametrize(
    ("positions", "states", "numbers"),
    [([1, 0], ["A", "B"], ["1", "2"]), ([0, 0], ["A", "B"], ["1", "2"]), ([-1], ["A"], ["1"]), ([0], [], ["1"])],
)
def test_malformed_packing_is_refused(positions: list[int], states: list[str], numbers: list[str]) -> None:
    with pytest.raises(ValueError, match="packed CLEARs"):
        _pack_clear(AuditClear(np.array(positions, np.int64), states, numbers))


def manifest(call_id: int, uid: str, n: int) -> tuple[AuditCall, list[AuditDocument], AuditClear]:
    """A manifest of `n` documents: position 1 a HIT, the others packed plain CLEARs."""
    hit = [AuditDocument(call_id, 1, "typed", "NZL", f"H{uid}", "HIT", "1")]
    positions = np.array([p for p in range(n) if p != 1], np.int64)
    numbers = [f"{uid}N{p}" for p in positions.tolist()]
    return (
        AuditCall(call_id, uid, utc_now(), "NZL", "border", "", 1, n, False),
        hit,
        AuditClear(positions, ["NZL"] * len(numbers), numbers),
    )


def test_renumbered_calls_keep_their_packed_documents(tmp_path: Path) -> None:
    store = RegisterStore(tmp_path / "register.db")
    try:
        assert store.write_audit([manifest(5, "a", 4)]) == (1, 2)  # renumbered to 1
        assert store.write_audit([manifest(9, "b", 3), manifest(2, "c", 2)]) == (2, 4)  # to 2 and 3
        rows = [
            (call, pos, r.query_id, r.verdict, r.document_number)
            for call, pos, r in store.list_audit(since=BOUNDS[0], until=BOUNDS[-1])
        ]
        assert rows == [
            (1, 0, "a-0", "CLEAR", "aN0"),
            (1, 1, "a-1", "HIT", "Ha"),
            (1, 2, "a-2", "CLEAR", "aN2"),
            (1, 3, "a-3", "CLEAR", "aN3"),
            (2, 0, "b-0", "CLEAR", "bN0"),
            (2, 1, "b-1", "HIT", "Hb"),
            (2, 2, "b-2", "CLEAR", "bN2"),
            (3, 0, "c-0", "CLEAR", "cN0"),
            (3, 1, "c-1", "HIT", "Hc"),
        ]
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("SELECT call_id, count FROM audit_clear ORDER BY call_id").fetchall() == [
                (1, 3),
                (2, 2),
                (3, 1),
            ]
    finally:
        store.close()


class FailingCommit:
    """The audit writer's connection, failing at COMMIT (after every insert of the batch, the packed one too)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        self.statements.append(sql)
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return self.conn.execute(sql, *args)

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        self.statements.append(sql)
        return self.conn.executemany(sql, rows)  # type: ignore[arg-type]


def test_failed_write_leaves_nothing_of_the_batch(tmp_path: Path) -> None:
    store = RegisterStore(tmp_path / "register.db")
    conn = sqlite3.connect(store.path, isolation_level=None)
    try:
        store.write_audit([manifest(1, "kept", 3)])
        failing = FailingCommit(conn)
        with pytest.raises(sqlite3.OperationalError, match="injected"):
            store.write_audit([manifest(2, "lost", 5), manifest(3, "gone", 2)], failing)  # type: ignore[arg-type]
        assert any(s.startswith("INSERT INTO audit_clear") for s in failing.statements)
        assert store.audit_count() == 3
        assert [r.query_id for r in store.audit_rows()] == ["kept-0", "kept-1", "kept-2"]
        assert store.find_audit_row("lost-0") is None
        with sqlite3.connect(store.path) as check:
            assert check.execute("SELECT COUNT(*) FROM audit_clear").fetchone()[0] == 1
            assert check.execute("SELECT COUNT(*) FROM audit_calls").fetchone()[0] == 1
        assert store.write_audit([manifest(2, "retried", 5)], conn) == (0, 3)  # the retry gets the same id
        assert store.audit_count() == 8
    finally:
        conn.close()
        store.close()


def test_writer_counts_packed_documents_as_clear_rows(tmp_path: Path) -> None:
    store = RegisterStore(tmp_path / "register.db")
    writer = AuditWriter(store, interval=30.0)
    try:
        call_id = writer.next_call_id()
        writer.submit(*manifest(call_id, "m", 6))
        before = writer.counts()
        assert (before.rows_pending, before.answers_by_verdict) == (6, {"HIT": 1, "CLEAR": 5})
        assert writer.flush()
        after = writer.counts()
        assert (after.rows_pending, after.rows_written, after.calls_by_kind) == (0, 6, {"manifest": 1})
        assert store.audit_count() == 6
    finally:
        writer.close()
        store.close()


def test_version_5_database_keeps_its_audit_rows_readable(tmp_path: Path) -> None:
    path = tmp_path / "register.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, up_to=5)  # the database as a version-5 idcheck left it
    conn.execute("INSERT INTO audit_calls VALUES (1, 'm', '2026-01-01T00:00:00.000Z', 'NZL', 'border', '', 3, 2, 0)")
    conn.execute("INSERT INTO audit_calls VALUES (2, 's', '2026-01-02T00:00:00.000Z', 'AUS', 'border', '', 3, 1, 1)")
    conn.execute("INSERT INTO audit VALUES (1, 0, 'typed', 'NZL', 'LA1', 'CLEAR', '', '')")
    conn.execute("INSERT INTO audit VALUES (1, 1, 'typed', 'NZL', 'LA2', 'HIT', '4', '')")
    conn.execute("INSERT INTO audit VALUES (2, 0, 'mrz', 'AUS', 'E1', 'CLEAR', '', '')")
    conn.close()
    store = RegisterStore(path)
    try:
        with sqlite3.connect(path) as check:
            assert check.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
                SCHEMA_VERSION
            )
        assert store.audit_count() == 3
        assert [r.query_id for r in store.audit_rows()] == ["m-0", "m-1", "s"]
        page = store.list_audit(since=BOUNDS[0], until=BOUNDS[-1], verdicts=["CLEAR"], limit=1)
        assert [(call, pos, r.document_number) for call, pos, r in page] == [(1, 0, "LA1")]
        assert store.find_audit_row("m-1")[0].verdict == "HIT"  # type: ignore[index]
        store.write_audit([manifest(3, "new", 3)])  # new calls pack their CLEARs next to the old rows
        assert [r.query_id for r in store.audit_rows(limit=4)] == ["s", "new-0", "new-1", "new-2"]
    finally:
        store.close()
