"""The pure parts of the client: the idempotency keys of release writes, the
rules of a rollout policy, and the mapping of a failed call (status,
``fleetsuit-error-code``, ``fleetsuit-outcome``, ``CODE: message``) to the
client's typed errors, with what is retried and what is definite."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from fleetsuit.client_errors import (
    FleetError,
    IdempotencyConflict,
    NotFound,
    Refused,
    TransportError,
    Unreachable,
    from_rpc_error,
)
from fleetsuit.release_model import (
    ReleaseInfo,
    RolloutPolicy,
    check_release_names,
    release_id_of,
    release_key,
    rollout_client_id,
)
from fleetsuit.v1 import consensus_pb2 as pb


def test_a_push_key_is_derived_from_its_component_and_sequence() -> None:
    assert release_key("ota-app", 7) == ("release/ota-app", 7)
    assert release_key("ota-app", 7) == release_key("ota-app", 7)
    assert release_key("ota-app", 8) != release_key("ota-app", 7)
    assert release_key("other", 7) != release_key("ota-app", 7)
    assert release_id_of("ota-app", 7) == "ota-app@7"
    assert rollout_client_id("ota-app@7") == "rollout/ota-app@7"


@pytest.mark.parametrize(("args", "field"), [
    (("", 1, "d", "v"), "component"),
    (("c", 0, "d", "v"), "sequence"),  # 0 is no request id
    (("c", 2**64, "d", "v"), "sequence"),
    (("c", 1, "", "v"), "device_class"),
    (("c", 1, "d", ""), "vendor_domain"),
])
def test_bad_release_names_are_refused_naming_the_field(args: tuple[str, int, str, str], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        check_release_names(*args)


@pytest.mark.parametrize("policy", [
    RolloutPolicy(),
    RolloutPolicy(start_at_unix_ms=1000),
    RolloutPolicy(start_at_unix_ms=1000, end_at_unix_ms=2000, experimental=True),
    RolloutPolicy(end_at_unix_ms=2000, experimental=True),
    RolloutPolicy(stages=(100,)),
    RolloutPolicy(stages=(1, 10, 50, 100)),
])
def test_good_rollout_policies_pass(policy: RolloutPolicy) -> None:
    assert policy.validate() is policy
    assert RolloutPolicy.from_pb(policy.to_pb()) == policy


@pytest.mark.parametrize(("policy", "words"), [
    (RolloutPolicy(experimental=True), "experimental release needs an end"),
    (RolloutPolicy(start_at_unix_ms=2000, end_at_unix_ms=2000), "after start_at"),
    (RolloutPolicy(start_at_unix_ms=3000, end_at_unix_ms=2000), "after start_at"),
    (RolloutPolicy(stages=(10, 50)), "end at 100"),
    (RolloutPolicy(stages=(10, 10, 100)), "ascending"),
    (RolloutPolicy(stages=(50, 10, 100)), "ascending"),
    (RolloutPolicy(stages=(0, 100)), "from 1 to 100"),
    (RolloutPolicy(stages=(50, 101)), "from 1 to 100"),
    (RolloutPolicy(start_at_unix_ms=-1), "start_at"),
])
def test_bad_rollout_policies_are_refused_saying_why(policy: RolloutPolicy, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        policy.validate()


class _Failed(grpc.RpcError):  # type: ignore[misc]
    """What a failed unary call raises: status, details, trailing metadata."""

    def __init__(self, status: grpc.StatusCode, details: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._status, self._details, self._metadata = status, details, metadata

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._metadata


def _typed(status: grpc.StatusCode, code: str, outcome: str = "definite", message: str = "why") -> FleetError:
    meta = (("fleetsuit-error-code", code), ("fleetsuit-outcome", outcome))
    return from_rpc_error(_Failed(status, f"{code}: {message}", meta), "127.0.0.1:7101")


@pytest.mark.parametrize("code", [
    "UNTRUSTED_KEY", "STALE_SEQUENCE", "PAYLOAD_MISSING", "DIGEST_MISMATCH", "REVOKED",
    "DUPLICATE_RELEASE", "INVALID_RELEASE", "UNKNOWN_RELEASE", "INVALID_TRANSITION", "NO_TRUST_ANCHORS",
])
def test_release_refusals_are_refused_definite_and_not_retried(code: str) -> None:
    error = _typed(grpc.StatusCode.FAILED_PRECONDITION, code)
    assert type(error) is Refused and error.code == code and error.message == "why"
    assert error.definite and not error.retryable
    assert str(error) == f"{code}: why"


@pytest.mark.parametrize(("code", "definite"), [
    ("OUTCOME_UNKNOWN", False), ("NO_LEADER", True), ("CHECK_UNAVAILABLE", True),
])
def test_unavailable_answers_are_retried_and_only_outcome_unknown_is_indefinite(code: str, definite: bool) -> None:
    outcome = "definite" if definite else "unknown"
    error = _typed(grpc.StatusCode.UNAVAILABLE, code, outcome)
    assert error.code == code and error.retryable and error.definite is definite


def test_a_reused_key_is_an_idempotency_conflict() -> None:
    error = _typed(grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert isinstance(error, IdempotencyConflict) and error.definite and not error.retryable


def test_an_unknown_release_is_not_found() -> None:
    assert isinstance(_typed(grpc.StatusCode.NOT_FOUND, "RELEASE_NOT_FOUND"), NotFound)


def test_transport_failures_never_connected_or_maybe_sent() -> None:
    refused = from_rpc_error(_Failed(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), "h:1")
    assert isinstance(refused, Unreachable) and refused.definite and refused.retryable
    broken = from_rpc_error(_Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "h:1")
    assert isinstance(broken, TransportError) and not broken.definite and broken.retryable
    late = from_rpc_error(_Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "h:1")
    assert isinstance(late, TransportError) and not late.definite
    wrong_port = from_rpc_error(_Failed(grpc.StatusCode.UNIMPLEMENTED, "Method not found!"), "h:1")
    assert not wrong_port.retryable and "right port" in wrong_port.message


def test_a_release_compares_by_content_not_by_envelope() -> None:
    entry = pb.ReleasePublished(
        release_id="c@1", envelope=b"signature one", component="c", sequence_number=1,
        payload_cid="sha256:" + "0" * 64, payload_size=3, device_classes=["d"], vendor_domain="v",
        rollout=pb.RolloutPolicy(stages=[10, 100]),
    )
    stored = ReleaseInfo.from_pb(pb.Release(
        release_id="c@1", component="c", sequence_number=1, payload_cid=entry.payload_cid, payload_size=3,
        device_classes=["d"], vendor_domain="v", rollout=pb.RolloutPolicy(stages=[10, 100]), state="active",
    ))
    assert stored.publishes(entry)
    entry.envelope = b"signature two"
    assert stored.publishes(entry)
    entry.rollout.stages[:] = [100]
    assert not stored.publishes(entry)
