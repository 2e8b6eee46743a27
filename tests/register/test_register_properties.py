"""Invariants of the register over random records, uploads and cancels (hypothesis).

Each example opens its own register on a real SQLite file in a fresh temporary directory.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from idcheck.icao import CONFUSION_TABLE, MRZFormat, compose_mrz, folded_key
from idcheck.index import MatchKind
from idcheck.records import MAX_PRINTED_NUMBER_LENGTH, StoredRecord
from idcheck.register import Caller, InvalidRequest, Query, RawRecord, Register, Verdict
from idcheck.store import AmbiguousKey, NotOwner, RecordNotFound
from idcheck.uploads import UploadMode, UploadOutcome

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BORDER = Caller("AUS", "border", "test")
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
STATES = ("NZL", "FJI", "D", "UTO", "GBD", "XXA", "EUE", "UNO")
# How a state may be typed by an officer: any of these canonicalise to the key.
STATE_SPELLINGS = {"D": ("D", "D<<", "DEU", "deu", "d"), "NZL": ("NZL", "nzl", " NZL ")}
GROUPS: dict[str, str] = {}  # character -> every character it folds together with (itself included)
for _char, _rep in CONFUSION_TABLE.items():
    GROUPS[_rep] = GROUPS.get(_rep, _rep) + _char
for _rep in list(GROUPS):
    for _char in GROUPS[_rep]:
        GROUPS[_char] = GROUPS[_rep]


@contextmanager
def fresh_register() -> Iterator[tuple[Register, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        register = Register.open(Path(tmp))
        try:
            yield register, Path(tmp)
        finally:
            register.close()


def upload(register: Register, member: str, upload_id: str, rows: Sequence[RawRecord], mode: int = 1) -> UploadOutcome:
    session = register.begin_upload(Caller(member, "member", "test"), upload_id, mode)
    session.add(rows)
    return session.commit()


def answers(register: Register, queries: Sequence[Query]) -> list[tuple[Verdict, list[tuple[MatchKind, StoredRecord]]]]:
    """Verdict and matches (kind and the whole record: id, data, owner, recorded_at, sequence) per query."""
    results, _ = register.check(BORDER, list(queries))
    return [(r.verdict, [(m.kind, m.record) for m in r.matches]) for r in results]


def change_log(path: Path) -> list[int]:
    """Sequence numbers of the change log, in order."""
    conn = sqlite3.connect(path)
    try:
        return [s for (s,) in conn.execute("SELECT seq FROM change_log ORDER BY seq")]
    finally:
        conn.close()


@st.composite
def printed(draw: st.DrawFn, canonical: str) -> str:
    """`canonical` as a person might type it: random case, spaces and dashes between characters."""
    out = []
    for c in canonical:
        out.append(c.lower() if c.isalpha() and draw(st.booleans()) else c)
        out.append(draw(st.sampled_from(["", "", "", " ", "-", "  "])))
    text = draw(st.sampled_from(["", " "])) + "".join(out)
    # A number is refused beyond MAX_PRINTED_NUMBER_LENGTH characters as printed: a long one loses its separators.
    return text if len(text) <= MAX_PRINTED_NUMBER_LENGTH else text.replace(" ", "").replace("-", "")


def spelled(draw: st.DrawFn, state: str) -> str:
    return draw(st.sampled_from(STATE_SPELLINGS.get(state, (state, state.lower()))))


numbers = st.text(alphabet=ALNUM, min_size=1, max_size=24)
listed_records = st.lists(
    st.tuples(
        st.sampled_from(STATES),
        numbers,
        st.sampled_from([1, 2, 3, 4]),  # document class
        st.sampled_from([1, 2, 3, 4, 5]),  # an active status
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda t: (t[0], t[1], t[2]),
)


# -- (1) and (2): listed is a HIT, cancelled is CLEAR --------------------------------------------------


@SETTINGS
@given(records=listed_records, data=st.data())
def test_uploaded_record_checked_as_typed_is_hit(records: list[tuple[str, str, int, int]], data: st.DataObject) -> None:
    with fresh_register() as (register, _):
        rows = [
            RawRecord(spelled(data.draw, s), data.draw(printed(n)), c, st_, "2024-01-01") for s, n, c, st_ in records
        ]
        assert upload(register, "NZL", "u1", rows).created == len(records)
        queries = [
            Query(spelled(data.draw, s), data.draw(printed(n)), data.draw(st.sampled_from([0, c])))
            for s, n, c, _ in records
        ]
        for verdict, matches in answers(register, queries):
            assert verdict == Verdict.HIT
            assert matches[0][0] == MatchKind.EXACT
        # A passport presented by its MRZ is a HIT as well.
        mrz_queries = [Query(mrz="\n".join(td3(s, n))) for s, n, c, _ in records if c == 1 and len(n) <= 9]
        if mrz_queries:
            assert all(v == Verdict.HIT for v, _ in answers(register, mrz_queries))


def td3(state: str, number: str) -> list[str]:
    return compose_mrz(
        MRZFormat.TD3,
        document_type="P",
        issuing_state=state,
        document_number=number,
        nationality=state,
        birth_date="800131",
        sex="F",
        expiry_date="300101",
        surname="TUILAGI",
        given_names="MELE",
    )


@SETTINGS
@given(records=listed_records, how=st.sampled_from(["cancel", "row", "replace_all"]), data=st.data())
def test_cancelled_record_is_clear(records: list[tuple[str, str, int, int]], how: str, data: st.DataObject) -> None:
    with fresh_register() as (register, _):
        rows = [RawRecord(s, n, c, st_, "2024-01-01") for s, n, c, st_ in records]
        upload(register, "NZL", "u1", rows)
        gone = data.draw(st.lists(st.sampled_from(range(len(records))), min_size=1, unique=True))
        kept = [i for i in range(len(records)) if i not in gone]
        if how == "cancel":
            outcome = register.cancel(
                Caller("NZL", "member"), [(records[i][0], records[i][1], records[i][2]) for i in gone], "x"
            )
            assert outcome.cancelled == len(gone)
        elif how == "row":
            cancels = [RawRecord(*records[i][:3], 6, "2024-02-01") for i in gone]
            assert upload(register, "NZL", "u2", cancels).updated == len(gone)
        else:
            assert upload(register, "NZL", "u2", [rows[i] for i in kept], UploadMode.REPLACE_ALL).cancelled == len(gone)
        assert register.sequence == len(records) + len(gone)
        queries = [Query(records[i][0], data.draw(printed(records[i][1])), records[i][2]) for i in range(len(records))]
        got = answers(register, queries)
        for i, (verdict, matches) in enumerate(got):
            if i in gone:
                # Another listed record may still be near it, but the cancelled one is never among the matches.
                assert verdict != Verdict.HIT or any(
                    (records[j][0], records[j][1]) == (records[i][0], records[i][1]) for j in kept
                )
                assert all(m[1].data.status.name != "CANCELLED" for m in matches)
            else:
                assert verdict == Verdict.HIT
        lone = [i for i in gone if all(folded_key(records[j][1]) != folded_key(records[i][1]) for j in kept)]
        assert all(got[i][0] == Verdict.CLEAR for i in lone)


# -- (3): a restart changes nothing --------------------------------------------------------------------


@SETTINGS
@given(
    batches=st.lists(listed_records, min_size=1, max_size=3),
    cancel_first=st.booleans(),
    data=st.data(),
)
def test_state_after_reopen_equals_state_before(
    batches: list[list[tuple[str, str, int, int]]], cancel_first: bool, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        register = Register.open(Path(tmp))
        keys = []
        try:
            for b, batch in enumerate(batches):
                mode = data.draw(st.sampled_from([UploadMode.INCREMENTAL, UploadMode.REPLACE_ALL]))
                upload(
                    register, "NZL", f"u{b}", [RawRecord(s, n, c, st_, "2024-01-01") for s, n, c, st_ in batch], mode
                )
                keys += [(s, n, c) for s, n, c, _ in batch]
            if cancel_first:
                first = batches[-1][0]
                register.cancel(Caller("NZL", "member"), [first[:3]], "x")
            queries = [Query(s, n, c) for s, n, c in keys] + [Query("", n) for _, n, _ in keys]
            queries += [Query(s, n.translate(str.maketrans("0O1I", "O0I1"))) for s, n, _ in keys]
            before, sequence, size = answers(register, queries), register.sequence, len(register.index)
        finally:
            register.close()
        register = Register.open(Path(tmp))
        try:
            assert register.sequence == sequence == register.store.last_sequence
            assert len(register.index) == size
            assert answers(register, queries) == before
        finally:
            register.close()


# -- (4): OCR variants are possible matches, never hits -----------------------------------------------


@st.composite
def ocr_case(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    """A listed number, an OCR-confused variant of it, and other listed numbers (maybe the variant itself)."""
    number = draw(st.text(alphabet="0O1I2Z5S6G8BQDLAX7", min_size=1, max_size=12))
    assume(any(c in GROUPS for c in number))
    variant = "".join(draw(st.sampled_from(GROUPS[c])) if c in GROUPS else c for c in number)
    assume(variant != number)
    others = draw(
        st.lists(st.sampled_from([variant, "".join(GROUPS.get(c, c)[0] for c in number), "X" + number]), max_size=2)
    )
    return number, variant, others


@SETTINGS
@given(case=ocr_case(), state=st.sampled_from(STATES), other_state=st.sampled_from(STATES), data=st.data())
def test_ocr_variant_of_listed_number_is_possible_match_unless_listed(
    case: tuple[str, str, list[str]], state: str, other_state: str, data: st.DataObject
) -> None:
    number, variant, others = case
    listed = {number, *others}
    with fresh_register() as (register, _):
        upload(register, "NZL", "u1", [RawRecord(state, n, 1, 2, "2024-01-01") for n in sorted(listed)])
        queries = [Query(state, data.draw(printed(variant)), 1), Query(state, variant), Query(other_state, variant, 1)]
        (typed, unclassed, elsewhere) = answers(register, queries)
        for verdict, matches in (typed, unclassed):
            if variant in listed:
                assert verdict == Verdict.HIT
            else:
                assert verdict == Verdict.POSSIBLE_MATCH
                assert {m[0] for m in matches} == {MatchKind.OCR_VARIANT}
                assert len(matches) == len({n for n in listed if folded_key(n) == folded_key(variant)})
        if other_state != state:
            # Under another state only the same number is shown (STATE_MISMATCH), never an OCR variant.
            assert elsewhere[0] == (Verdict.POSSIBLE_MATCH if variant in listed else Verdict.CLEAR)
            assert all(m[0] == MatchKind.STATE_MISMATCH for m in elsewhere[1])


# -- (5): the live index always answers as one rebuilt from the store ---------------------------------

UNIVERSE_STATES = ("NZL", "D")
UNIVERSE_NUMBERS = ("AB10", "A810", "XY77")  # the first two fold together
MEMBERS = ("NZL", "FJI")
DATES = ("2024-01-01", "2024-02-01")

row_spec = st.tuples(
    st.sampled_from(UNIVERSE_STATES),
    st.sampled_from(UNIVERSE_NUMBERS),
    st.sampled_from([1, 2]),
    st.sampled_from([1, 2, 2, 6]),
    st.sampled_from([DATES[0], DATES[0], DATES[1]]),
    st.sampled_from([True, True, True, False]),  # valid row, or one with a bad event date
)
upload_op = st.tuples(
    st.just("upload"),
    st.sampled_from(MEMBERS),
    st.sampled_from(["u1", "u2", "u3", "u4", "u5", "u6"]),  # repeats are replays
    st.sampled_from([UploadMode.INCREMENTAL, UploadMode.REPLACE_ALL]),
    st.lists(row_spec, max_size=8),
)
cancel_op = st.tuples(
    st.just("cancel"),
    st.sampled_from(MEMBERS),
    st.lists(
        st.tuples(st.sampled_from(UNIVERSE_STATES), st.sampled_from(UNIVERSE_NUMBERS), st.sampled_from([0, 1, 2])),
        min_size=1,
        max_size=2,
    ),
)


class Model:
    """What the register must hold: key -> (owner, status, event date), and the sequence."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str, int], tuple[str, int, str]] = {}
        self.uploads: set[tuple[str, str]] = set()
        self.sequence = 0

    def upload(
        self, member: str, upload_id: str, mode: UploadMode, rows: list[tuple]
    ) -> tuple[int, int, int, int] | None:
        if (member, upload_id) in self.uploads:
            return None
        self.uploads.add((member, upload_id))
        seen: set[tuple[str, str, int]] = set()
        keep: set[tuple[str, str, int]] = set()
        created = updated = unchanged = 0
        changes: dict[tuple[str, str, int], tuple[str, int, str]] = {}
        for state, number, cls, status, date, ok in rows:
            key = (state, number, cls)
            if not ok:
                keep.add(key)  # rejected row, key protected from REPLACE_ALL
                continue
            if key in seen:
                continue  # duplicate of an earlier row
            seen.add(key)
            old = self.records.get(key)
            if old is not None and old[0] != member:
                continue  # another member's record
            if old is None and status == 6:
                continue  # nothing to cancel
            keep.add(key)
            new = (member, status, date)
            if old is None:
                created += 1
            elif old != new:
                updated += 1
            else:
                unchanged += 1
                continue
            changes[key] = new
        self.records.update(changes)
        cancelled = 0
        if mode == UploadMode.REPLACE_ALL:
            for key, (owner, status, date) in list(self.records.items()):
                if owner == member and status != 6 and key not in keep:
                    self.records[key] = (owner, 6, date)
                    cancelled += 1
        self.sequence += created + updated + cancelled
        return created, updated, unchanged, cancelled

    def cancel(self, member: str, keys: list[tuple[str, str, int]]) -> type[Exception] | int:
        targets = []
        for state, number, cls in keys:
            found = [k for k in self.records if k[:2] == (state, number) and (cls == 0 or k[2] == cls)]
            if not found:
                return RecordNotFound
            if len(found) > 1:
                return AmbiguousKey
            if self.records[found[0]][0] != member:
                return NotOwner
            targets.append(found[0])
        changed = 0
        for key in dict.fromkeys(targets):
            owner, status, date = self.records[key]
            if status != 6:
                self.records[key] = (owner, 6, date)
                changed += 1
        self.sequence += changed
        return changed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(upload_op, upload_op, cancel_op), min_size=1, max_size=10))
def test_live_index_answers_as_index_rebuilt_from_store(ops: list[tuple]) -> None:
    model = Model()
    with tempfile.TemporaryDirectory() as tmp:
        register = Register.open(Path(tmp))
        try:
            for op in ops:
                if op[0] == "upload":
                    _, member, upload_id, mode, rows = op
                    raws = [RawRecord(s, n, c, status, d if ok else "") for s, n, c, status, d, ok in rows]
                    outcome = upload(register, member, upload_id, raws, mode)
                    expected = model.upload(member, upload_id, mode, rows)
                    if expected is None:
                        assert outcome.replayed
                    else:
                        assert not outcome.replayed
                        assert (outcome.created, outcome.updated, outcome.unchanged, outcome.cancelled) == expected
                else:
                    _, member, keys = op
                    expected = model.cancel(member, keys)
                    try:
                        outcome = register.cancel(Caller(member, "member"), keys, "test")
                    except (NotOwner, RecordNotFound, AmbiguousKey) as exc:
                        assert type(exc) is expected
                    else:
                        assert outcome.cancelled == expected
                assert register.sequence == model.sequence == register.store.last_sequence
            queries = (
                [Query(s, n, c) for s in UNIVERSE_STATES for n in UNIVERSE_NUMBERS for c in (0, 1, 2)]
                + [Query("", n) for n in UNIVERSE_NUMBERS]
                + [Query("FJI", n) for n in UNIVERSE_NUMBERS]
            )
            live = answers(register, queries)
            assert register.audit.flush()
            # What the store holds is what the model says.
            stored = {
                (r.data.key.issuing_state, r.data.key.number, int(r.data.key.document_class)): (
                    r.owner,
                    int(r.data.status),
                    r.data.event_date,
                )
                for r in register.store.iter_records(active_only=False)
            }
            assert stored == model.records
            for q, (verdict, _) in zip(queries, live, strict=True):
                if q.issuing_state in UNIVERSE_STATES:
                    active = [
                        k
                        for k, v in model.records.items()
                        if k[:2] == (q.issuing_state, q.document_number) and q.document_class in (0, k[2]) and v[1] != 6
                    ]
                    assert (verdict == Verdict.HIT) == bool(active), q
            rebuilt = Register.open(Path(tmp))
            try:
                assert rebuilt.sequence == register.sequence
                assert len(rebuilt.index) == len(register.index)
                assert answers(rebuilt, queries) == live
            finally:
                rebuilt.close()
            assert change_log(Path(tmp) / "register.db") == list(range(1, model.sequence + 1))
        finally:
            register.close()


# -- (6): a manifest with bad queries is refused whole, naming each one ---------------------------------

BAD_QUERIES = {
    "bad_state": (Query("ZZZ", "LA123456"), ".typed.issuing_state"),
    "no_number": (Query("NZL", ""), ".typed.document_number"),
    "bad_number": (Query("NZL", "LA#123"), ".typed.document_number"),
    "long_number": (Query("NZL", "9" * 25), ".typed.document_number"),
    "bad_class": (Query("NZL", "LA123456", 8), ".typed.document_class"),
    "bad_birth": (Query("NZL", "LA123456", 1, "1980-13-01"), ".typed.birth_date"),
    "bad_mrz": (Query(mrz="P<UTOERIKSSON<<ANNA\nL898902C3"), ".mrz"),
}


@SETTINGS
@given(
    kinds=st.lists(st.one_of(st.none(), st.sampled_from(sorted(BAD_QUERIES))), min_size=1, max_size=12),
    data=st.data(),
)
def test_manifest_with_bad_queries_names_each_and_audits_nothing(kinds: list[str | None], data: st.DataObject) -> None:
    with fresh_register() as (register, _):
        upload(register, "NZL", "u1", [RawRecord("NZL", "LA123456", 1, 2, "2024-01-01")])
        queries = [
            BAD_QUERIES[k][0]
            if k
            else Query(data.draw(st.sampled_from(["NZL", "nzl", "D", ""])), data.draw(printed("LA123456")))
            for k in kinds
        ]
        bad = [(i, BAD_QUERIES[k][1]) for i, k in enumerate(kinds) if k]
        if bad:
            try:
                register.check(BORDER, queries)
            except InvalidRequest as exc:
                assert [f for f, _ in exc.violations] == [f"queries[{i}]{suffix}" for i, suffix in bad]
                assert all(d for _, d in exc.violations)
            else:
                raise AssertionError("a manifest with bad queries was answered")
            assert register.audit.flush()
            assert register.store.audit_count() == 0
        else:
            results, _ = register.check(BORDER, queries)
            assert len(results) == len(queries)
            assert register.audit.flush()
            assert register.store.audit_count() == len(queries)
