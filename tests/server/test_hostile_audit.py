"""Hostile input against the AuditLog service of a live server: bad dates, tokens, limits, cursors, query ids
and outcomes, huge and non-printable strings, as an operator, a member and a border system.

Allowed outcomes: a correct answer, or a precise status code with a message. The server stays healthy, and a
refused ConfirmHit leaves the store as it was. `IDCHECK_FUZZ_EXAMPLES` raises the number of generated cases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idcheck.v1 import audit_pb2 as pb
from idcheck.v1 import audit_pb2_grpc
from tests.conftest import ServerProcess, start_server, store_digest

EXAMPLES = int(os.environ.get("IDCHECK_FUZZ_EXAMPLES", "40"))
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROLES = {
    "operator": (("x-idcheck-member", "NZL"), ("x-idcheck-role", "operator")),
    "owner": (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member")),
    "asker": (("x-idcheck-member", "FJI"), ("x-idcheck-role", "border")),
    "stranger": (("x-idcheck-member", "WSM"), ("x-idcheck-role", "member")),
}
VERDICTS = ["HIT", "POSSIBLE_MATCH", "CLEAR", "MATCH", "NO_MATCH", "CANDIDATES", "NO_CANDIDATES"]


@dataclass(frozen=True)
class Live:
    server: ServerProcess
    channel: grpc.Channel
    hit_ids: list[str]  # query ids of HITs by FJI on NZL's records, undecided
    clear_ids: list[str]  # query ids of CLEAR checks


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    server = start_server(tmp_path_factory.mktemp("hostile-audit") / "data", "--rate-limit-per-second", "0")
    with server.client("NZL", "member") as owner:
        owner.upload(
            [
                {"issuing_state": "NZL", "document_number": f"AU{i:04d}", "document_class": 1, "status": 2,
                 "event_date": "2025-01-01"}
                for i in range(40)
            ]
        )  # fmt: skip
    with server.client("FJI", "border") as asker:
        hits = [asker.check(state="NZL", number=f"AU{i:04d}").query_id for i in range(40)]
        clears = [asker.check(state="NZL", number=f"NO{i:04d}").query_id for i in range(3)]
    assert server.stop() == 0  # flush the audit log, then serve again from the same store
    server = start_server(server.data_dir, "--rate-limit-per-second", "0")
    channel = grpc.insecure_channel(server.address)
    yield Live(server, channel, hits, clears)
    channel.close()
    server.stop()


def assert_healthy(channel: grpc.Channel) -> None:
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def stub(channel: grpc.Channel) -> audit_pb2_grpc.AuditLogStub:
    return audit_pb2_grpc.AuditLogStub(channel)


nasty_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789-:TZ+.< \t\x00", max_size=30),
    st.sampled_from(["", " ", "x" * 100_000, "\u202e2025-01-01", "NZL", "nzl", "D", "ZZZ"]),
)
times = st.one_of(
    nasty_text,
    st.sampled_from(
        [
            "2025-01-01",
            "2025-13-01",
            "2025-02-30",
            "0000-01-01",
            "0001-01-01",
            "9999-12-31",
            "2025-01-01T00:00:00Z",
            "2025-01-01T00:00:00",
            "2025-01-01T25:00:00Z",
            "2025-01-01T00:00:00+14:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-05:00",
            "2025-01-01T00:00:00.123456789Z",
            "1970-01-01T00:00:00Z",
            "+002025-01-01",
            "2025-W01-1",
        ]
    ),
)
numbers = st.one_of(st.integers(-5, 5), st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 10**30, 99999999999999999999]))
tokens = st.one_of(
    nasty_text,
    st.builds(lambda a, b: f"{a}:{b}", numbers, numbers),
    st.sampled_from(["1:0", ":", "1:", ":1", "1:2:3", "1_0:0", " 1 : 0 ", "0x10:0", "١:٠"]),
)


@HYPOTHESIS
@given(
    role=st.sampled_from(["operator", "owner", "asker"]),
    since=times,
    until=times,
    caller=nasty_text,
    verdicts=st.lists(st.one_of(st.sampled_from(VERDICTS), nasty_text), max_size=3),
    limit=st.one_of(st.integers(-3, 12), st.sampled_from([10_000, 10_001, 2**31 - 1, -(2**31)])),
    token=tokens,
)
def test_random_audit_listings_get_a_page_or_invalid_argument(
    live: Live, role: str, since: str, until: str, caller: str, verdicts: list[str], limit: int, token: str
) -> None:
    before = store_digest(live.server.data_dir)
    request = pb.ListAuditRequest(
        since=since, until=until, caller_member=caller, verdicts=verdicts, limit=limit, page_token=token
    )
    try:
        resp = stub(live.channel).ListAudit(request, metadata=ROLES[role], timeout=30)
    except grpc.RpcError as err:
        expected = grpc.StatusCode.PERMISSION_DENIED if role == "asker" else grpc.StatusCode.INVALID_ARGUMENT
        assert err.code() == expected, (err.code(), err.details())
        assert err.details()
    else:
        assert role != "asker"  # border systems do not read the audit log
        assert 0 <= limit <= 10_000 and since.strip()
        assert all(v in VERDICTS for v in verdicts)
        assert len(resp.entries) <= (limit or 1000)
        if verdicts:
            assert {e.verdict for e in resp.entries} <= set(verdicts)
        if role == "owner":  # a member sees only the checks that matched its records
            assert {e.verdict for e in resp.entries} <= {"HIT", "POSSIBLE_MATCH"}
    assert store_digest(live.server.data_dir) == before
    assert_healthy(live.channel)


@HYPOTHESIS
@given(role=st.sampled_from(["owner", "asker", "stranger"]), cursor=tokens)
def test_random_watch_cursors_resume_or_are_refused(live: Live, role: str, cursor: str) -> None:
    request = pb.WatchHitsRequest(cursor=cursor, catch_up_only=True)
    try:
        hits = list(stub(live.channel).WatchHits(request, metadata=ROLES[role], timeout=30))
    except grpc.RpcError as err:
        allowed = {grpc.StatusCode.INVALID_ARGUMENT}
        if role == "asker":
            allowed.add(grpc.StatusCode.PERMISSION_DENIED)  # border systems own no records to watch
        assert err.code() in allowed, (err.code(), err.details())
        assert err.details()
    else:
        assert role != "asker"
        if role == "stranger":
            assert hits == []  # no hits on WSM's records, whatever the cursor
        else:
            assert len(hits) <= len(live.hit_ids)
            assert {h.query_id for h in hits} <= set(live.hit_ids)
            cursors = [tuple(int(x) for x in h.cursor.split(":")) for h in hits]
            assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert_healthy(live.channel)


@HYPOTHESIS
@given(
    role=st.sampled_from(["owner", "asker", "stranger"]),
    query=st.one_of(nasty_text, st.sampled_from(["hit", "clear", "hit-padded"])),
    outcome=st.one_of(nasty_text, st.sampled_from(["CONFIRMED", "REJECTED", "confirmed", " rejected ", "PENDING"])),
    note=st.one_of(st.text(max_size=20), st.sampled_from(["n" * 1001, "\x00\x01", "x" * 100_000])),
)
def test_random_hit_decisions_are_recorded_once_or_change_nothing(
    live: Live, role: str, query: str, outcome: str, note: str
) -> None:
    query_id = {"hit": live.hit_ids[-1], "clear": live.clear_ids[0], "hit-padded": f"  {live.hit_ids[-1]}\t"}.get(
        query, query
    )
    before = store_digest(live.server.data_dir)
    request = pb.ConfirmHitRequest(query_id=query_id, outcome=outcome, note=note)
    try:
        resp = stub(live.channel).ConfirmHit(request, metadata=ROLES[role], timeout=30)
    except grpc.RpcError as err:
        assert err.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.FAILED_PRECONDITION,  # decided before
        }, (err.code(), err.details())
        assert err.details()
        assert store_digest(live.server.data_dir) == before
    else:
        # Only NZL, owner of the matched record, may decide a real hit, with a valid outcome and note, once.
        assert role == "owner" and query in ("hit", "hit-padded")
        assert outcome.strip().upper() in ("CONFIRMED", "REJECTED") and len(note) <= 1000
        assert resp.outcome.outcome == outcome.strip().upper() and resp.outcome.query_id == live.hit_ids[-1]
        live.hit_ids.pop()  # decided: a new one is drawn next time
        with pytest.raises(grpc.RpcError) as again:
            stub(live.channel).ConfirmHit(request, metadata=ROLES[role], timeout=30)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert_healthy(live.channel)


@HYPOTHESIS
@given(
    role=st.sampled_from(["owner", "asker", "stranger", "operator"]),
    query=st.one_of(nasty_text, st.sampled_from(["hit", "clear"])),
)
def test_random_outcome_reads_answer_or_are_refused(live: Live, role: str, query: str) -> None:
    query_id = {"hit": live.hit_ids[0], "clear": live.clear_ids[0]}.get(query, query)
    before = store_digest(live.server.data_dir)
    try:
        resp = stub(live.channel).GetHitOutcome(pb.GetHitOutcomeRequest(query_id=query_id), metadata=ROLES[role])
    except grpc.RpcError as err:
        assert err.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
        }, (err.code(), err.details())
        assert err.details()
    else:
        assert query == "hit" and role in ("owner", "asker")  # the owner and the member that asked
        assert resp.query_id == live.hit_ids[0] and resp.caller_member == "FJI"
        assert resp.outcome in ("PENDING", "CONFIRMED", "REJECTED")
    assert store_digest(live.server.data_dir) == before
    assert_healthy(live.channel)


# Found by the properties above: a time whose UTC form falls outside years 1-9999, and a page token or cursor
# number beyond SQLite's 64-bit integers, once raised OverflowError and were answered INTERNAL.


@pytest.mark.parametrize(
    ("since", "until"), [("0001-01-01T00:00:00+01:00", ""), ("2025-01-01", "9999-12-31T23:59:59-05:00")]
)
def test_audit_time_outside_the_calendar_in_utc_is_invalid_argument(live: Live, since: str, until: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub(live.channel).ListAudit(pb.ListAuditRequest(since=since, until=until), metadata=ROLES["operator"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("token", ["99999999999999999999:0", "0:-99999999999999999999", "9223372036854775808:0"])
def test_page_token_beyond_64_bits_is_invalid_argument(live: Live, token: str) -> None:
    request = pb.ListAuditRequest(since="2025-01-01", page_token=token)
    with pytest.raises(grpc.RpcError) as err:
        stub(live.channel).ListAudit(request, metadata=ROLES["operator"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_cursor_beyond_64_bits_is_invalid_argument(live: Live) -> None:
    request = pb.WatchHitsRequest(cursor="99999999999999999999:0", catch_up_only=True)
    with pytest.raises(grpc.RpcError) as err:
        list(stub(live.channel).WatchHits(request, metadata=ROLES["owner"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
