"""Who the members are, as this node sees them, and how to reach them.

The address of every member comes with the CONFIG entry that added it (its
context): learned from the log as entries arrive, and kept in the applied
state once applied. The transport and the certifier follow the
configuration in effect (the core's voters and learners), never the static
peer list a node was started with. Runs on the runtime's loop; no locks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ..ledger.machine import decode_member_context
from ..ledger.store import LedgerStore
from ..metrics import ConsensusMetrics
from ..raft.membership import ConfChange, ConfChangeKind, ConfigDecodeError, decode_config
from ..raft.types import Entry, EntryType
from .certification import Certifier
from .ports import PeerTransport

log = logging.getLogger(__name__)


class Membership:
    def __init__(
        self,
        node_id: str,
        store: LedgerStore,
        transport: PeerTransport,
        metrics: ConsensusMetrics,
        static: Mapping[str, str] | None = None,
    ) -> None:
        self._me = node_id
        self._store = store
        self._transport = transport
        self._metrics = metrics
        self.addresses: dict[str, str] = dict(static or {})
        self.addresses.update(store.addresses())
        self._current: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def learn(self, entries: Sequence[Entry]) -> None:
        """Addresses carried by CONFIG entries of the log, applied or not."""
        for entry in entries:
            if entry.type is not EntryType.CONFIG:
                continue
            try:
                _, change = decode_config(entry.data)
            except ConfigDecodeError:
                continue
            address = decode_member_context(change.context)
            if change.kind is ConfChangeKind.ADD_LEARNER and address:
                self.addresses[change.node_id] = address

    def reload(self) -> None:
        """A snapshot replaced the applied state: its addresses count too."""
        self.addresses.update(self._store.addresses())

    def applied(self, change: ConfChange) -> None:
        self._metrics.membership_changes.labels(change.kind.value).inc()
        if change.kind is ConfChangeKind.PROMOTE:
            self._metrics.promotions.inc()

    def knows(self, node_id: str) -> bool:
        """A member, or a node whose address the configuration gave us."""
        voters, learners = self._current
        return node_id in voters or node_id in learners or node_id in self.addresses

    def follow(self, voters: tuple[str, ...], learners: tuple[str, ...], certifier: Certifier | None) -> None:
        """The configuration in effect is (voters, learners): point the
        transport and the certifier at it, if it changed."""
        if (voters, learners) == self._current:
            return
        self._current = (voters, learners)
        self._metrics.voters.set(len(voters))
        self._metrics.learners.set(len(learners))
        if certifier is not None:
            certifier.set_voters(voters)
        members = [n for n in (*voters, *learners) if n != self._me]
        missing = [n for n in members if n not in self.addresses]
        if missing:
            log.warning("no address known for members %s", missing)
        self._transport.set_peers({n: self.addresses[n] for n in members if n in self.addresses})
