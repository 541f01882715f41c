"""Gathers the quorum certificates of the ledger (the Signer/Verifier role).

After applying blocks a node signs their hashes with its node key and pushes
the signatures to its peers; it verifies every signature it receives against
the key that node recorded in the ledger and against its own block at that
height, keeps the valid ones, and advances ``certified_height`` while the next
block has signatures from a majority of the voters. Signatures that cannot be
checked yet (the block or the signer's key not applied here yet) wait in a
bounded pending set. Runs on the runtime's event loop; no locks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from fleetsuit.v1 import consensus_pb2 as pb

from .ledger.block import BlockData
from .ledger.certify import NodeKey, block_message, quorum, verify
from .ledger.machine import LedgerMachine
from .metrics import ConsensusMetrics
from .storage import RocksStorage

log = logging.getLogger(__name__)

MAX_PENDING = 20_000
MAX_RANGE = 1_000  # heights per GetSignatures answer
HASH_CACHE = 4_096  # recent block hashes kept to check peers' signatures


class Certifier:
    def __init__(
        self,
        node_id: str,
        cluster_id: str,
        key: NodeKey,
        storage: RocksStorage,
        machine: LedgerMachine,
        voters: Sequence[str],
        metrics: ConsensusMetrics,
    ) -> None:
        self._node_id = node_id
        self._cluster_id = cluster_id
        self._key = key
        self._storage = storage
        self._machine = machine
        self._voters = frozenset(voters)
        self._quorum = quorum(len(self._voters))
        self._metrics = metrics
        self._certified = storage.certified_height()
        self._signers: dict[int, set[str]] = {}
        self._pending: dict[tuple[int, str], pb.SignedBlock] = {}
        self._hashes: dict[int, bytes] = {}
        for height in range(self._certified + 1, machine.height + 1):
            self._signers[height] = {nid for nid, _ in storage.signatures(height)}
        self._advance()

    def set_voters(self, voters: Iterable[str]) -> None:
        """The configuration changed: certificates need a majority of the new voters."""
        self._voters = frozenset(voters)
        self._quorum = quorum(len(self._voters))
        self._advance()

    @property
    def public_key(self) -> bytes:
        return self._key.public

    @property
    def certified_height(self) -> int:
        return self._certified

    def key_registration(self) -> pb.Member:
        """This node's MembershipChanged member, with its proof of possession."""
        from .ledger.certify import key_message

        proof = self._key.sign(key_message(self._cluster_id, self._node_id, self._key.public))
        return pb.Member(node_id=self._node_id, public_key=self._key.public, key_proof=proof, voter=True)

    def sign_blocks(self, blocks: Sequence[BlockData]) -> list[pb.SignedBlock]:
        signed = []
        for block in blocks:
            self._remember_hash(block.height, block.hash)
            signature = self._key.sign(block_message(self._cluster_id, block.height, block.hash))
            signed.append(pb.SignedBlock(
                height=block.height, hash=block.hash, node_id=self._node_id, signature=signature))
        if signed:
            self._storage.put_signatures([(s.height, s.node_id, s.signature) for s in signed])
            for s in signed:
                self._signers.setdefault(s.height, set()).add(self._node_id)
            self._retry_pending()
            self._advance()
        return signed

    def receive(self, items: Iterable[pb.SignedBlock]) -> None:
        accepted: list[tuple[int, str, bytes]] = []
        accepted_at: dict[int, int] = {}
        for item in items:
            if item.node_id not in self._voters or item.node_id == self._node_id:
                continue
            if item.height <= self._certified:
                continue
            signers = self._signers.get(item.height, ())
            if item.node_id in signers:
                continue
            if len(signers) + accepted_at.get(item.height, 0) >= self._quorum:
                # A majority is already verified at this height: one more
                # signature would cost a verify (the dearest step of
                # certification) and certify nothing more. (The runtime signs
                # its own applied blocks before it takes peers' signatures,
                # so with 3 voters one verify per block is enough.)
                continue
            verdict = self._check(item)
            if verdict is None:
                if len(self._pending) < MAX_PENDING:
                    self._pending[(item.height, item.node_id)] = item
            elif verdict:
                accepted.append((item.height, item.node_id, item.signature))
                accepted_at[item.height] = accepted_at.get(item.height, 0) + 1
        self._accept(accepted)

    def _check(self, item: pb.SignedBlock) -> bool | None:
        """True: valid; False: invalid; None: cannot tell yet."""
        key = self._machine.member_key(item.node_id)
        block_hash = self._block_hash(item.height)
        if key is None or block_hash is None:
            return None
        if block_hash != item.hash:
            log.warning("%s signed a different block at height %d", item.node_id, item.height)
            self._metrics.certificate_conflicts.inc()
            return False
        message = block_message(self._cluster_id, item.height, item.hash)
        if not verify(key, message, item.signature):
            self._metrics.certificate_conflicts.inc()
            return False
        return True

    def _remember_hash(self, height: int, block_hash: bytes) -> None:
        self._hashes[height] = block_hash
        while len(self._hashes) > HASH_CACHE:  # heights arrive in order: drop the oldest
            del self._hashes[next(iter(self._hashes))]

    def _block_hash(self, height: int) -> bytes | None:
        """The hash of our block at ``height`` (None: not applied here yet);
        recent ones from a cache, so checking a signature decodes no block."""
        cached = self._hashes.get(height)
        if cached is not None:
            return cached
        if height > self._machine.height:
            return None
        block = self._machine.get_block(height)
        return None if block is None else block.hash

    def _accept(self, accepted: list[tuple[int, str, bytes]]) -> None:
        if not accepted:
            return
        self._storage.put_signatures(accepted)
        for height, node_id, _ in accepted:
            self._signers.setdefault(height, set()).add(node_id)
        self._advance()

    def _retry_pending(self) -> None:
        if not self._pending:
            return
        items, self._pending = list(self._pending.values()), {}
        self.receive(items)

    def on_applied(self) -> None:
        """New blocks or member keys were applied: pending signatures may verify now."""
        self._retry_pending()

    def _advance(self) -> None:
        start = self._certified
        while len(self._signers.get(self._certified + 1, ())) >= self._quorum:
            self._certified += 1
            self._signers.pop(self._certified, None)
        if self._certified != start:
            self._storage.set_certified_height(self._certified)
        self._metrics.certified_height.set(self._certified)
        self._metrics.certificate_lag.set(max(0, self._machine.height - self._certified))

    def missing(self) -> tuple[int, int] | None:
        """Heights still lacking a majority here, to ask peers for."""
        if self._certified >= self._machine.height:
            return None
        return self._certified + 1, min(self._machine.height, self._certified + MAX_RANGE)

    def signatures_between(self, first: int, last: int) -> list[pb.SignedBlock]:
        out = []
        for height in range(max(1, first), min(last, first + MAX_RANGE - 1, self._machine.height) + 1):
            block = self._machine.get_block(height)
            if block is None:
                break
            out.extend(
                pb.SignedBlock(height=height, hash=block.hash, node_id=nid, signature=sig)
                for nid, sig in self._storage.signatures(height)
            )
        return out

    def certificate(self, height: int) -> list[tuple[str, bytes]]:
        return self._storage.signatures(height)
