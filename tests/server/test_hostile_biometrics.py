"""Hostile input against the Biometrics service of a live server: NaN/inf, wrong dimensions, empty and oversized
vectors, out-of-range k, duplicate and foreign ids, huge and non-printable strings, bad enums.

Allowed outcomes: a correct answer, or a precise status code (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED)
with details. The server stays healthy, and a refused write leaves the store byte for byte as it was.
`IDCHECK_FUZZ_EXAMPLES` raises the number of generated cases per property (`make torture`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.client.biometrics import BiometricsClient, encode_vector
from idcheck.client.errors import from_rpc_error
from idcheck.v1 import biometrics_pb2 as pb
from idcheck.v1 import biometrics_pb2_grpc
from tests.conftest import ServerProcess, start_server, store_digest

DIM = 512
EXAMPLES = int(os.environ.get("IDCHECK_FUZZ_EXAMPLES", "40"))
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
NZL = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))
FJI = (("x-idcheck-member", "FJI"), ("x-idcheck-role", "member"))
BORDER = (("x-idcheck-member", "WSM"), ("x-idcheck-role", "border"))
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}

GEN = FaceGenerator(seed=11)
GALLERY = GEN.gallery(12, 2, seed=1)


@dataclass(frozen=True)
class Live:
    server: ServerProcess
    channel: grpc.Channel
    nzl_ids: list[int]
    fji_ids: list[int]


def subject(member: str, i: int) -> str:
    return f"{member}-{i:03d}"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A server whose gallery holds templates of NZL (subjects 0-5) and FJI (6-11)."""
    server = start_server(tmp_path_factory.mktemp("hostile-bio") / "data", "--rate-limit-per-second", "0")
    ids: dict[str, list[int]] = {}
    for member in ("NZL", "FJI"):
        with BiometricsClient(server.address, member=member, role="member") as client:
            rows = [r for r, i in enumerate(GALLERY.identities) if (i < 6) == (member == "NZL")]
            result = client.enrol(
                [
                    {
                        "subject_id": subject(member, int(GALLERY.identities[r])),
                        "vector": GALLERY.vectors[r],
                        "documents": [(member, f"BIO{int(GALLERY.identities[r]):05d}")],
                    }
                    for r in rows
                ]
            )
            ids[member] = list(result.template_ids)
    channel = grpc.insecure_channel(server.address)
    yield Live(server, channel, ids["NZL"], ids["FJI"])
    channel.close()
    server.stop()


def assert_healthy(channel: grpc.Channel) -> None:
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def assert_refused_precisely(err: grpc.RpcError, allowed: set[grpc.StatusCode] = REFUSALS) -> None:
    assert err.code() in allowed, (err.code(), err.details())
    assert err.details(), "a refusal must say why"


def stub(channel: grpc.Channel) -> biometrics_pb2_grpc.BiometricsStub:
    return biometrics_pb2_grpc.BiometricsStub(channel)


# Vectors: right-sized and valid, poisoned with NaN/inf, all zeros, wrong byte length, wrong stated dimension,
# empty, and (rarely) huge.
SPECIAL = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e38, -1e38, 1e-45]


@st.composite
def vectors(draw: st.DrawFn) -> tuple[int, bytes, bool]:
    """(stated dimension, data, valid) for a FeatureVector."""
    kind = draw(st.sampled_from(["good", "poisoned", "zeros", "short", "long", "dimension", "empty", "huge", "bytes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    good = rng.standard_normal(DIM).astype("<f4")
    if kind == "good":
        return DIM, good.tobytes(), True
    if kind == "poisoned":
        good[draw(st.integers(0, DIM - 1))] = draw(st.sampled_from(SPECIAL[:3]))
        return DIM, good.tobytes(), False
    if kind == "zeros":
        return DIM, np.zeros(DIM, "<f4").tobytes(), False
    if kind == "short":
        return DIM, good.tobytes()[: draw(st.integers(0, 4 * DIM - 1))], False
    if kind == "long":
        return DIM, good.tobytes() + draw(st.binary(min_size=1, max_size=64)), False
    if kind == "dimension":
        dim = draw(st.sampled_from([-1, 0, 1, 128, 511, 513, 2**31 - 1, -(2**31)]))
        return dim, good.tobytes(), False
    if kind == "empty":
        return 0, b"", False
    if kind == "huge":
        return DIM, b"\x00\x00\x80\x3f" * (1 << 20), False  # 4 MiB of 1.0f
    return DIM, rng.bytes(4 * DIM), None  # any bytes: valid only if all finite


def bytes_valid(data: bytes) -> bool:
    values = np.frombuffer(data, "<f4")
    return bool(np.isfinite(values).all() and np.linalg.norm(values.astype(np.float64)) > 0)


nasty_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="NZL-0<> \t\n\x00\x7fßİ\u202e", max_size=30),
    st.sampled_from(["", " ", "NZL-000", " NZL-000", "FJI-006", "x" * 129, "y" * 100_000]),
)
modalities = st.one_of(st.just(1), st.integers(-3, 5), st.just(2**31 - 1))


@HYPOTHESIS
@given(
    templates=st.lists(
        st.tuples(
            nasty_text,
            modalities,
            vectors(),
            st.one_of(st.none(), st.floats(allow_nan=True), st.floats(0, 1)),
            st.lists(st.tuples(nasty_text, nasty_text), max_size=3),
        ),
        min_size=0,
        max_size=5,
    )
)
def test_random_enrolments_are_all_applied_or_change_nothing(live: Live, templates: list) -> None:
    server, channel = live.server, live.channel
    before = store_digest(server.data_dir)
    request = pb.EnrolTemplatesRequest(
        templates=[
            pb.TemplateEnrolment(
                subject_id=sid,
                modality=modality,
                vector=pb.FeatureVector(dimension=dim, data=data),
                quality=quality,
                documents=[pb.LinkedDocument(issuing_state=s, document_number=n) for s, n in docs],
            )
            for sid, modality, (dim, data, _), quality, docs in templates
        ]
    )
    try:
        resp = stub(channel).EnrolTemplates(request, metadata=NZL, timeout=30)
    except grpc.RpcError as err:
        assert_refused_precisely(err)
        assert store_digest(server.data_dir) == before  # all or nothing: nothing
    else:
        # Accepted only if every template was acceptable: one face vector, right size, finite, not all zeros.
        assert templates
        for _, modality, (dim, data, valid), quality, _ in templates:
            assert modality == 1 and dim == DIM and len(data) == 4 * DIM
            assert valid is not False and bytes_valid(data)
            assert quality is None or 0 <= np.float32(quality) <= 1  # as the float field carries it
        assert len(resp.template_ids) == len(templates) == len(set(resp.template_ids))
        # Leave the gallery as the other properties expect it: remove what was just enrolled.
        stub(channel).RemoveTemplates(
            pb.RemoveTemplatesRequest(template_ids=list(resp.template_ids)), metadata=NZL, timeout=30
        )
    assert_healthy(channel)


@HYPOTHESIS
@given(
    probe=vectors(),
    modality=modalities,
    claim=st.one_of(
        st.tuples(st.just("subject"), st.one_of(nasty_text, st.sampled_from([subject("NZL", 3), subject("FJI", 7)]))),
        st.tuples(st.just("document"), st.tuples(nasty_text, nasty_text)),
        st.tuples(st.just("document"), st.just(("NZL", "BIO00002"))),
        st.just(("none", None)),
    ),
)
def test_random_verifies_get_an_answer_or_a_precise_refusal(
    live: Live, probe: tuple[int, bytes, bool], modality: int, claim: tuple
) -> None:
    server, channel = live.server, live.channel
    before = store_digest(server.data_dir)
    dim, data, valid = probe
    request = pb.VerifyRequest(modality=modality, probe=pb.FeatureVector(dimension=dim, data=data))
    kind, value = claim
    if kind == "subject":
        request.subject_id = value
    elif kind == "document":
        request.document.CopyFrom(pb.LinkedDocument(issuing_state=value[0], document_number=value[1]))
    try:
        resp = stub(channel).Verify(request, metadata=BORDER, timeout=30)
    except grpc.RpcError as err:
        assert_refused_precisely(err)
    else:
        assert modality == 1 and valid is not False and bytes_valid(data) and kind != "none"
        assert resp.decision in (pb.DECISION_MATCH, pb.DECISION_NO_MATCH)
        assert np.isfinite(resp.score) and -1.0001 <= resp.score <= 1.0001
        assert (resp.score >= resp.operating_point.threshold) == (resp.decision == pb.DECISION_MATCH)
        assert resp.templates_compared >= 1 and resp.query_id
    assert store_digest(server.data_dir) == before
    assert_healthy(channel)


@HYPOTHESIS
@given(
    probe=vectors(),
    modality=modalities,
    k=st.one_of(st.integers(-5, 105), st.sampled_from([-(2**31), 2**31 - 1, 1000, 10**6])),
)
def test_random_identifies_respect_k_or_are_refused(
    live: Live, probe: tuple[int, bytes, bool], modality: int, k: int
) -> None:
    server, channel = live.server, live.channel
    before = store_digest(server.data_dir)
    dim, data, valid = probe
    request = pb.IdentifyRequest(modality=modality, probe=pb.FeatureVector(dimension=dim, data=data), max_candidates=k)
    try:
        resp = stub(channel).Identify(request, metadata=BORDER, timeout=30)
    except grpc.RpcError as err:
        assert_refused_precisely(err, {grpc.StatusCode.INVALID_ARGUMENT})
    else:
        assert modality == 1 and valid is not False and bytes_valid(data)
        assert 0 <= k <= 100  # the server's max_candidates; 0 asks for the default
        scores = [c.score for c in resp.candidates]
        assert len(scores) <= (k or 10)
        assert scores == sorted(scores, reverse=True)
        assert all(s >= resp.operating_point.threshold for s in scores)
        assert [c.rank for c in resp.candidates] == list(range(1, len(scores) + 1))
        assert resp.gallery_size == len(GALLERY.identities)
    assert store_digest(server.data_dir) == before
    assert_healthy(channel)


@HYPOTHESIS
@given(
    ids=st.lists(
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-3, 40), st.just(0)),
        max_size=6,
    ),
    subjects=st.lists(st.one_of(nasty_text, st.sampled_from([subject("FJI", 7), subject("NZL", 99)])), max_size=4),
    foreign=st.booleans(),
)
def test_random_removals_of_unknown_or_foreign_templates_change_nothing(
    live: Live, ids: list[int], subjects: list[str], foreign: bool
) -> None:
    """NZL asks to remove ids and subjects that are unknown or FJI's (NZL's own are never drawn)."""
    server, channel = live.server, live.channel
    if foreign:
        ids = [*ids, live.fji_ids[0], live.fji_ids[0]]  # duplicated, and FJI's
    nzl_subjects = {subject("NZL", i) for i in range(6)}
    subjects = [s for s in subjects if s not in nzl_subjects]
    ids = [i for i in ids if i not in live.nzl_ids]
    before = store_digest(server.data_dir)
    request = pb.RemoveTemplatesRequest(template_ids=ids, subject_ids=subjects)
    with pytest.raises(grpc.RpcError) as err:
        stub(channel).RemoveTemplates(request, metadata=NZL, timeout=30)
    if not ids and not subjects:
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert_refused_precisely(err.value, {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED})
    assert store_digest(server.data_dir) == before
    assert_healthy(channel)


def test_duplicate_ids_in_one_removal_remove_once(live: Live) -> None:
    server, channel = live.server, live.channel
    vector = GEN.probes(np.array([500]), seed=9).vectors[0]
    with BiometricsClient(server.address, member="NZL", role="member") as client:
        [tid] = client.enrol([{"subject_id": "NZL-DUP", "vector": vector}]).template_ids
        before = store_digest(server.data_dir)
        resp = stub(channel).RemoveTemplates(
            pb.RemoveTemplatesRequest(template_ids=[tid, tid, tid], subject_ids=["NZL-DUP", "NZL-DUP"]),
            metadata=NZL,
            timeout=30,
        )
        assert resp.removed == 1
        assert store_digest(server.data_dir) != before
        assert all(c.template_id != tid for c in client.identify(vector, max_candidates=100).candidates)


def test_oversized_and_empty_batches_are_refused_without_change(
    live: Live,
) -> None:
    server, channel = live.server, live.channel
    before = store_digest(server.data_dir)
    one = pb.TemplateEnrolment(subject_id="NZL-BIG", modality=1, vector=encode_vector(GALLERY.vectors[0]))
    for request in (pb.EnrolTemplatesRequest(), pb.EnrolTemplatesRequest(templates=[one] * 10_001)):
        with pytest.raises(grpc.RpcError) as err:
            stub(channel).EnrolTemplates(request, metadata=NZL, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A message beyond the 32 MiB limit is refused by gRPC itself before any handler runs.
    huge = pb.VerifyRequest(
        subject_id="NZL-000", modality=1, probe=pb.FeatureVector(dimension=DIM, data=b"\0" * (33 << 20))
    )
    with pytest.raises(grpc.RpcError) as err:
        stub(channel).Verify(huge, metadata=BORDER, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # One good template with one bad one beside it: nothing is enrolled.
    bad = pb.TemplateEnrolment(
        subject_id="NZL-BAD",
        modality=1,
        vector=pb.FeatureVector(dimension=DIM, data=struct.pack("<f", float("nan")) * DIM),
    )
    with pytest.raises(grpc.RpcError) as err:
        stub(channel).EnrolTemplates(pb.EnrolTemplatesRequest(templates=[one, bad]), metadata=NZL, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in from_rpc_error(err.value).violations] == ["templates[1].vector.data"]
    assert store_digest(server.data_dir) == before
    assert_healthy(channel)
