"""How a fleetsuit node run as a Kubernetes StatefulSet pod finds and joins
its peers: from its pod name alone.

A StatefulSet names its pods ``<set>-<ordinal>`` (``fleetsuit-0``,
``fleetsuit-1``, ...) and a headless Service gives each a stable DNS name
(``fleetsuit-0.fleetsuit``). ``pod_plan`` turns a pod's name into what its
services need:

- ``peers``: the bootstrap members, ordinals ``0 .. bootstrap_replicas-1``,
  each node id (the pod name) with its consensus address. They are the
  first configuration of the cluster; once the cluster runs, membership is
  what its log says (Raft §6) and the list only serves a blank node to find
  the cluster (``services/consensus/synchronizer.py``).
- ``join``: an ordinal at or beyond ``bootstrap_replicas`` is not in that
  first configuration. It starts as a learner (``--join``) and is added with
  ``request_membership``: AddMember through any bootstrap member (the
  leader's address is found from its Status), retried while there is no
  leader or another change is pending. The leader promotes it once it has
  caught up.
- ``dht_seeds``: the dht addresses of the bootstrap members other than this
  pod, and ``advertise``: this pod's own host, the one peers dial.

What this module does not do: start processes (``launcher/node/`` does, with
these values), or remove a member: scaling down is ``fleetsuit cluster
remove --node-id <pod>`` before the pod goes (README, Kubernetes).

``address_template`` places: ``{pod}``, ``{service}`` (the headless
Service), ``{ordinal}``, ``{port}`` (the service's port) and
``{ordinal_port}`` (``port + 10 * ordinal``: tests run "pods" on loopback
with ``127.0.0.1:{ordinal_port}``, the port spacing of a local cluster).
"""

from __future__ import annotations

import logging
import re
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from fleetsuit.grpcutil import CHANNEL_OPTIONS
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc

from .layout import NODE_PORT_SPAN

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{pod}.{service}:{port}"
PLACES = frozenset({"pod", "service", "ordinal", "port", "ordinal_port"})
# The ports a plan needs: consensus (peers, own address) and dht (seeds).
REQUIRED_PORTS = ("consensus", "dht")
# A DNS label (RFC 1123), as Kubernetes requires of pod and Service names.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# ``<set>-<ordinal>``; Kubernetes writes ordinals without leading zeros.
_POD = re.compile(r"(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]{0,8})")
STATUS_TIMEOUT_S = 2.0
CHANGE_TIMEOUT_S = 15.0
RETRY_PAUSE_S = 0.3
# Membership refusals that may pass by themselves: no leader yet, another
# change pending, a leader that stepped down mid-call.
_RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_RETRIED_ERRORS = ("NOT_LEADER", "CHANGE_PENDING", "NO_LEADER", "OUTCOME_UNKNOWN", "SHUTTING_DOWN")


class StatefulSetError(ValueError):
    """A pod name, a spec or a port that cannot give a plan; the message names it."""


class MembershipError(RuntimeError):
    """The cluster refused to add the pod, or did not within the deadline."""


@dataclass(frozen=True)
class StatefulSetSpec:
    service: str  # the headless Service
    bootstrap_replicas: int  # ordinals 0..N-1 form the first configuration
    address_template: str = DEFAULT_TEMPLATE

    def validate(self) -> StatefulSetSpec:
        """Returns self; StatefulSetError naming the bad field."""
        if _LABEL.fullmatch(self.service) is None:
            raise StatefulSetError(f"service {self.service!r} is not a DNS label (a-z, 0-9, '-')")
        if self.bootstrap_replicas < 1:
            raise StatefulSetError(f"bootstrap_replicas must be at least 1, got {self.bootstrap_replicas}")
        places = _places(self.address_template)
        if not places & {"pod", "ordinal", "ordinal_port"}:
            raise StatefulSetError(
                f"address_template {self.address_template!r} gives every pod the same address: "
                "use {pod}, {ordinal} or {ordinal_port}"
            )
        if not places & {"port", "ordinal_port"}:
            raise StatefulSetError(
                f"address_template {self.address_template!r} gives every service the same address: "
                "use {port} or {ordinal_port}"
            )
        return self


@dataclass(frozen=True)
class PodPlan:
    pod: str
    ordinal: int
    peers: dict[str, str]  # node id -> consensus address, of the bootstrap members
    join: bool  # ordinal >= bootstrap_replicas: start as a learner and ask to be added
    dht_seeds: tuple[str, ...]  # the bootstrap members' dht, this pod left out
    advertise: str  # this pod's own host, as peers dial it
    address: str = ""  # this pod's consensus address (HOST:PORT)

    @property
    def consensus_peers(self) -> dict[str, str]:
        """``--peers`` of this pod's consensus process: the bootstrap members
        and this pod (a joining pod names its own address too, which it
        gives the leader when it re-joins after losing its data)."""
        return {**self.peers, self.pod: self.address} if self.address else dict(self.peers)


def parse_pod_name(pod_name: str) -> tuple[str, int]:
    """``fleetsuit-4`` -> ("fleetsuit", 4); StatefulSetError otherwise."""
    match = _POD.fullmatch(pod_name)
    if match is None or len(pod_name) > 63:
        raise StatefulSetError(
            f"pod name {pod_name!r} is not <statefulset>-<ordinal> (a DNS label ending in "
            "-0, -1, ...)"
        )
    return match["set"], int(match["ordinal"])


def pod_plan(pod_name: str, spec: StatefulSetSpec, ports: Mapping[str, int]) -> PodPlan:
    """The plan of pod ``pod_name``. ``ports``: service name -> port (at
    least ``consensus`` and ``dht``). StatefulSetError naming what is wrong."""
    spec.validate()
    set_name, ordinal = parse_pod_name(pod_name)
    for name in REQUIRED_PORTS:
        port = ports.get(name)
        if port is None:
            raise StatefulSetError(f"ports: no {name} port")
        if not 1 <= port <= 65535:
            raise StatefulSetError(f"ports: {name} port {port} out of range 1..65535")

    def address(ordinal_: int, service: str) -> str:
        return _render(spec, f"{set_name}-{ordinal_}", ordinal_, ports[service])

    bootstrap = range(spec.bootstrap_replicas)
    own = address(ordinal, "consensus")
    return PodPlan(
        pod=pod_name,
        ordinal=ordinal,
        peers={f"{set_name}-{i}": address(i, "consensus") for i in bootstrap},
        join=ordinal >= spec.bootstrap_replicas,
        dht_seeds=tuple(address(i, "dht") for i in bootstrap if i != ordinal),
        advertise=own.rpartition(":")[0],
        address=own,
    )


def _places(template: str) -> set[str]:
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise StatefulSetError(f"address_template {template!r}: {exc}") from None
    places: set[str] = set()
    for _text, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PLACES or spec or conversion:
            raise StatefulSetError(
                f"address_template {template!r}: {{{name}}} is not one of "
                + ", ".join(f"{{{p}}}" for p in sorted(PLACES))
            )
        places.add(name)
    return places


def _render(spec: StatefulSetSpec, pod: str, ordinal: int, port: int) -> str:
    ordinal_port = port + NODE_PORT_SPAN * ordinal
    text = spec.address_template.format(
        pod=pod, service=spec.service, ordinal=ordinal, port=port, ordinal_port=ordinal_port
    )
    host, sep, port_text = text.rpartition(":")
    canonical = port_text.isdigit() and str(int(port_text)) == port_text
    if not sep or not host or not canonical or not 1 <= int(port_text) <= 65535:
        raise StatefulSetError(
            f"address_template {spec.address_template!r} gives {text!r} for {pod}, not HOST:PORT "
            "with a port in 1..65535"
        )
    return text


# ---------------------------------------------------------------- joining


def request_membership(plan: PodPlan, own_address: str, deadline_s: float) -> None:
    """Have the cluster add this pod (a learner, promoted by the leader once
    caught up): AddMember to the leader, found through any bootstrap member.
    No leader, a leader change or another change pending are retried until
    ``deadline_s`` has passed. Already a member (a restarted pod) is done.
    A bootstrap pod is in the first configuration: nothing to ask.
    MembershipError on a refusal or when the deadline passes."""
    if not plan.join:
        return
    host, sep, port = own_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise StatefulSetError(f"own_address {own_address!r} is not HOST:PORT")
    members = [address for node_id, address in sorted(plan.peers.items()) if node_id != plan.pod]
    if not members:
        raise StatefulSetError(f"{plan.pod}: no bootstrap member to ask")
    request = pb.AddMemberRequest(node_id=plan.pod, address=own_address)
    deadline = time.monotonic() + deadline_s
    last = "no member answered"
    while True:
        for member in members:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MembershipError(
                    f"{plan.pod} not added within {deadline_s:g}s (asked {', '.join(members)}): {last}"
                )
            try:
                if _add_through(member, request, remaining):
                    return
                last = f"{member}: no leader known"
            except grpc.RpcError as exc:
                last = f"{member}: {exc.code().name}: {exc.details()}"
                if not _retried(exc):
                    raise MembershipError(f"{plan.pod} refused by the cluster: {last}") from None
            log.info("membership of %s not requested yet: %s; retrying", plan.pod, last)
        time.sleep(min(RETRY_PAUSE_S, max(0.0, deadline - time.monotonic())))


def _add_through(member: str, request: pb.AddMemberRequest, remaining_s: float) -> bool:
    """AddMember on the leader ``member`` knows; False when it knows none."""
    with grpc.insecure_channel(member, options=CHANNEL_OPTIONS) as channel:
        status = pb_grpc.LedgerStub(channel).Status(
            pb.StatusRequest(), timeout=min(STATUS_TIMEOUT_S, remaining_s)
        )
    if status.role == "leader":
        leader = member
    else:
        leader = next((m.address for m in status.members if m.node_id == status.leader_id), "")
    if not leader:
        return False
    with grpc.insecure_channel(leader, options=CHANNEL_OPTIONS) as channel:
        try:
            response = pb_grpc.LedgerStub(channel).AddMember(
                request, timeout=min(CHANGE_TIMEOUT_S, remaining_s)
            )
        except grpc.RpcError as exc:
            if "already a member" in (exc.details() or ""):
                log.info("%s is already a member", request.node_id)
                return True
            raise
    learners = [m.node_id for m in response.members if not m.voter]
    log.info("%s added as a learner at index %d (learners: %s)", request.node_id, response.index,
             ", ".join(learners) or "-")
    return True


def _retried(exc: grpc.RpcError) -> bool:
    details = exc.details() or ""
    return exc.code() in _RETRIED_CODES or details.startswith(_RETRIED_ERRORS)
