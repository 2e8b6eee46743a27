"""End to end: the Biometrics service of a real `idcheck serve` process, with the real client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.client.biometrics import BiometricsClient, encode_vector
from idcheck.client.errors import InvalidArgument, NotFound, PermissionDenied
from idcheck.v1 import biometrics_pb2 as pb
from idcheck.v1 import biometrics_pb2_grpc
from tests.conftest import ServerProcess

GEN = FaceGenerator(seed=7)
N_SUBJECTS = 40
GALLERY = GEN.gallery(N_SUBJECTS, 2, seed=1)  # two captures per subject
PROBES = GEN.probes(np.arange(N_SUBJECTS), seed=2)  # fresh good captures of the same subjects
STRANGERS = GEN.probes(np.arange(10_000, 10_010), seed=3)  # never enrolled


def subject(i: int) -> str:
    return f"NZL-{i:04d}"


def templates(member: str = "NZL") -> list[dict[str, object]]:
    return [
        {
            "subject_id": subject(int(i)),
            "vector": GALLERY.vectors[row],
            "quality": float(GALLERY.quality[row]),
            "documents": [(member, f"LA{int(i):06d}")],
        }
        for row, i in enumerate(GALLERY.identities)
    ]


def bio(server: ServerProcess, member: str = "NZL", role: str = "member") -> BiometricsClient:
    return BiometricsClient(server.address, member=member, role=role)


def healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def enrolled(server: ServerProcess) -> Iterator[BiometricsClient]:
    with bio(server) as client:
        result = client.enrol(templates(), batch_size=50)
        assert len(result.template_ids) == 2 * N_SUBJECTS and result.subjects_created == N_SUBJECTS
        yield client


def test_verify_match_and_no_match_state_threshold_and_rate(server: ServerProcess, enrolled: BiometricsClient) -> None:
    with bio(server, "FJI", "border") as border:
        match = border.verify(PROBES.vectors[3], subject_id=subject(3))
        other = border.verify(PROBES.vectors[4], subject_id=subject(3))
    assert match.decision == "MATCH" and match.score >= match.threshold and match.subject_id == subject(3)
    assert other.decision == "NO_MATCH" and other.score < other.threshold
    assert (match.threshold, match.target_rate, match.rate_kind) == (pytest.approx(0.3845), 1e-4, "FMR")
    assert match.templates_compared == 2
    expected = float(np.max(GALLERY.vectors[GALLERY.identities == 3] @ PROBES.vectors[3]))
    assert match.score == pytest.approx(expected, abs=1e-5)  # exact cosine, not a quantised one


def test_verify_by_linked_document(server: ServerProcess, enrolled: BiometricsClient) -> None:
    answer = enrolled.verify(PROBES.vectors[5], document=("nzl", "LA-000005"))
    assert answer.decision == "MATCH" and answer.subject_id == subject(5)
    assert enrolled.verify(PROBES.vectors[6], document=("NZL", "LA000005")).decision == "NO_MATCH"


def test_identify_returns_top_k_best_first_with_owner_and_documents(
    server: ServerProcess, enrolled: BiometricsClient
) -> None:
    with bio(server, "FJI", "border") as border:
        answer = border.identify(PROBES.vectors[7], max_candidates=3)
        nobody = border.identify(STRANGERS.vectors[0], max_candidates=3)
    assert answer.candidates[0].subject_id == subject(7) and answer.candidates[0].rank == 1
    assert answer.candidates[0].owner_member == "NZL"
    assert answer.candidates[0].documents == (("NZL", "LA000007"),)
    scores = [c.score for c in answer.candidates]
    assert scores == sorted(scores, reverse=True) and all(s >= answer.threshold for s in scores)
    assert (answer.rate_kind, answer.target_rate, answer.gallery_size) == ("FPIR", 1e-3, 2 * N_SUBJECTS)
    assert nobody.candidates == ()


def test_removed_subject_is_never_returned_and_stays_removed_after_restart(
    server_factory: Callable[..., ServerProcess], server: ServerProcess, enrolled: BiometricsClient
) -> None:
    assert enrolled.remove(subject_ids=[subject(7)]).removed == 2
    [first_of_8] = [tid for tid in enrolled.identify(PROBES.vectors[8]).candidates if tid.subject_id == subject(8)]
    assert enrolled.remove(template_ids=[first_of_8.template_id]).removed == 1
    assert subject(7) not in {c.subject_id for c in enrolled.identify(PROBES.vectors[7], max_candidates=100).candidates}
    with pytest.raises(NotFound) as err:
        enrolled.verify(PROBES.vectors[7], subject_id=subject(7))
    assert err.value.reason == "TEMPLATE_NOT_FOUND"
    server.stop()
    restarted = server_factory(data_dir=server.data_dir)
    with bio(restarted) as client:
        again = client.identify(PROBES.vectors[7], max_candidates=100)
        assert subject(7) not in {c.subject_id for c in again.candidates}
        assert again.gallery_size == 2 * N_SUBJECTS - 3
        eight = client.identify(PROBES.vectors[8], max_candidates=1).candidates[0]
        assert eight.subject_id == subject(8) and eight.template_id != first_of_8.template_id
        assert client.verify(PROBES.vectors[9], subject_id=subject(9)).decision == "MATCH"
    assert "snapshot at sequence" in restarted.log  # loaded from the snapshot written at shutdown


def test_corrupt_snapshot_is_rebuilt_from_the_store(
    server_factory: Callable[..., ServerProcess], server: ServerProcess, enrolled: BiometricsClient
) -> None:
    server.stop()
    snapshot = server.data_dir / "templates.faissidx"
    data = bytearray(snapshot.read_bytes())
    data[-100] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    restarted = server_factory(data_dir=server.data_dir)
    assert "checksum mismatch" in restarted.log and "built from the store" in restarted.log
    with bio(restarted) as client:
        answer = client.identify(PROBES.vectors[11], max_candidates=1)
    assert answer.candidates[0].subject_id == subject(11) and answer.gallery_size == 2 * N_SUBJECTS


def test_approximate_index_serves_and_survives_restart(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--approximate-above", "30", "--ivf-nprobe", "8")
    with bio(server) as client:
        client.enrol(templates(), batch_size=80)
        deadline = time.monotonic() + 30  # the switch to the approximate index is built in the background
        while client.identify(PROBES.vectors[0]).search_kind != "approximate" and time.monotonic() < deadline:
            time.sleep(0.05)
        found = [client.identify(PROBES.vectors[i], max_candidates=1) for i in range(N_SUBJECTS)]
    assert {a.search_kind for a in found} == {"approximate"}
    assert sum(a.candidates[0].subject_id == subject(i) for i, a in enumerate(found) if a.candidates) >= 39
    server.stop()
    restarted = server_factory("--approximate-above", "30", data_dir=server.data_dir)
    with bio(restarted) as client:
        assert client.identify(PROBES.vectors[0], max_candidates=1).search_kind == "approximate"


def raw_call(server: ServerProcess, method: str, request: object, member: str = "NZL", role: str = "member") -> None:
    with grpc.insecure_channel(server.address) as ch:
        stub = biometrics_pb2_grpc.BiometricsStub(ch)
        getattr(stub, method)(request, timeout=10, metadata=(("x-idcheck-member", member), ("x-idcheck-role", role)))


def good_vector() -> pb.FeatureVector:
    return encode_vector(PROBES.vectors[0])


def vector_of(values: np.ndarray) -> pb.FeatureVector:
    return pb.FeatureVector(dimension=len(values), data=np.asarray(values, "<f4").tobytes())


NAN = np.full(512, 0.1, np.float32)
NAN[3] = np.nan
INF = np.full(512, 0.1, np.float32)
INF[7] = np.inf


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Identify", pb.IdentifyRequest(modality=1, probe=vector_of(np.ones(128))), "probe.dimension"),
        (
            "Identify",
            pb.IdentifyRequest(modality=1, probe=pb.FeatureVector(dimension=512, data=b"\0" * 12)),
            "probe.data",
        ),
        ("Identify", pb.IdentifyRequest(modality=1, probe=vector_of(NAN)), "probe.data"),
        ("Identify", pb.IdentifyRequest(modality=1, probe=vector_of(INF)), "probe.data"),
        ("Identify", pb.IdentifyRequest(modality=1, probe=vector_of(np.zeros(512))), "probe.data"),
        ("Identify", pb.IdentifyRequest(modality=1), "probe"),
        ("Identify", pb.IdentifyRequest(modality=1, probe=good_vector(), max_candidates=101), "max_candidates"),
        ("Identify", pb.IdentifyRequest(modality=1, probe=good_vector(), max_candidates=-1), "max_candidates"),
        ("Identify", pb.IdentifyRequest(probe=good_vector()), "modality"),
        ("Identify", pb.IdentifyRequest(modality=2, probe=good_vector()), "modality"),
        ("Verify", pb.VerifyRequest(modality=1, probe=good_vector()), "claim"),
        ("Verify", pb.VerifyRequest(modality=1, subject_id="NZL-0001"), "probe"),
        (
            "Verify",
            pb.VerifyRequest(modality=1, probe=good_vector(), document=pb.LinkedDocument(issuing_state="QQQ")),
            "document.issuing_state",
        ),
        ("EnrolTemplates", pb.EnrolTemplatesRequest(), "templates"),
        ("RemoveTemplates", pb.RemoveTemplatesRequest(), "template_ids"),
    ],
)
def test_bad_input_is_invalid_argument_with_its_field(
    server: ServerProcess, enrolled: BiometricsClient, method: str, request_: object, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        raw_call(server, method, request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    from idcheck.client.errors import from_rpc_error

    violations = from_rpc_error(err.value).violations
    assert field in [f for f, _ in violations], violations
    assert healthy(server.address)


def test_enrol_batch_with_one_bad_template_applies_none(server: ServerProcess, enrolled: BiometricsClient) -> None:
    batch = templates()[:5]
    fresh = [{**t, "subject_id": f"NEW-{i}"} for i, t in enumerate(batch)]
    fresh[3] = {**fresh[3], "vector": np.zeros(512)}
    fresh[4] = {**fresh[4], "documents": [("NZL", "")]}
    with pytest.raises(InvalidArgument) as err:
        enrolled.enrol(fresh)
    fields = [f for f, _ in err.value.violations]
    assert fields == ["templates[3].vector.data", "templates[4].documents[0].document_number"]
    assert enrolled.identify(PROBES.vectors[0]).gallery_size == 2 * N_SUBJECTS
    with pytest.raises(NotFound):
        enrolled.verify(PROBES.vectors[0], subject_id="NEW-0")


def test_another_members_subject_is_permission_denied_and_nothing_applied(
    server: ServerProcess, enrolled: BiometricsClient
) -> None:
    with bio(server, "AUS") as aus:
        with pytest.raises(PermissionDenied) as err:
            aus.enrol([{"subject_id": "AUS-1", "vector": PROBES.vectors[1]}, templates()[0]])
        assert "templates[1].subject_id" in err.value.message
        with pytest.raises(PermissionDenied):
            aus.remove(subject_ids=[subject(1)])
        first = enrolled.identify(PROBES.vectors[1], max_candidates=1).candidates[0]
        with pytest.raises(PermissionDenied):
            aus.remove(template_ids=[first.template_id])
        with pytest.raises(NotFound):
            aus.verify(PROBES.vectors[1], subject_id="AUS-1")  # the batch was not applied
    assert enrolled.verify(PROBES.vectors[1], subject_id=subject(1)).templates_compared == 2
    assert healthy(server.address)


@pytest.mark.parametrize(
    ("role", "call"),
    [
        ("border", lambda c: c.enrol([templates()[0]])),
        ("border", lambda c: c.remove(subject_ids=[subject(0)])),
        ("operator", lambda c: c.identify(PROBES.vectors[0])),
        ("operator", lambda c: c.verify(PROBES.vectors[0], subject_id=subject(0))),
    ],
)
def test_roles_that_may_not_call_are_refused(
    server: ServerProcess, role: str, call: Callable[[BiometricsClient], object]
) -> None:
    with bio(server, "NZL", role) as client, pytest.raises(PermissionDenied) as err:
        call(client)
    assert err.value.reason == "ROLE_DENIED"
