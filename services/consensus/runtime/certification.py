"""Gathers the quorum certificates of the ledger (the Signer/Verifier role).

After applying blocks a node signs their hashes with its node key and pushes
the signatures to its peers; it verifies every signature it receives against
the key that node recorded in the ledger and against its own block at that
height, keeps the valid ones, and advances ``certified_height`` while the next
block has signatures from a majority of the voters. Signatures that cannot be
checked yet (the block or the signer's key not applied here yet) wait in a
bounded pending set.

``CertificationLoop`` (the runtime's task): signs applied blocks and pushes
the signatures to the peers in batches (one RPC per peer for many blocks,
not one per block), records this node's key in the ledger once, and pulls
the signatures of blocks whose certification has stalled (a push can be
lost), rather than of every block still in flight. Runs on the runtime's
event loop; no locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from ..ledger.block import BlockData
from ..ledger.certify import NodeKey, block_message, key_message, quorum, verify
from ..ledger.codec import encode_key_registration
from ..ledger.entries import BlockSignature, MemberKey
from ..ledger.keys import RequestKey
from ..ledger.machine import LedgerMachine
from ..ledger.store import LedgerStore
from ..metrics import ConsensusMetrics
from .config import RuntimeConfig
from .ports import PeerTransport

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
        storage: LedgerStore,
        machine: LedgerMachine,
        voters: Iterable[str],
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
        self._pending: dict[tuple[int, str], BlockSignature] = {}
        self._hashes: dict[int, bytes] = {}
        self._recorded = False  # the ledger records our key (checked until it does)
        for height in range(self._certified + 1, machine.height + 1):
            self._signers[height] = {nid for nid, _ in storage.signatures(height)}
        self._advance()

    def unsigned(self) -> list[BlockData]:
        """Applied blocks not yet certified that this node has not signed:
        at start, or after a snapshot replaced the state, blocks applied
        just before a crash (or brought by the snapshot) still need our
        signature, or their certificate could wait forever."""
        out = []
        for height in range(self._certified + 1, self._machine.height + 1):
            if self._node_id not in self._signers.get(height, ()):
                block = self._machine.get_block(height)
                if block is not None:
                    out.append(block)
        return out

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

    def key_registration(self) -> MemberKey:
        """This node's key, with its proof of possession."""

        proof = self._key.sign(key_message(self._cluster_id, self._node_id, self._key.public))
        return MemberKey(self._node_id, self._key.public, proof)

    def sign_blocks(self, blocks: Sequence[BlockData]) -> list[BlockSignature]:
        signed = []
        for block in blocks:
            self._remember_hash(block.height, block.hash)
            signature = self._key.sign(block_message(self._cluster_id, block.height, block.hash))
            signed.append(BlockSignature(block.height, block.hash, self._node_id, signature))
        if signed:
            self._storage.put_signatures([(s.height, s.node_id, s.signature) for s in signed])
            for s in signed:
                self._signers.setdefault(s.height, set()).add(self._node_id)
            self._retry_pending()
            self._advance()
        return signed

    def receive(self, items: Iterable[BlockSignature]) -> None:
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
            if self._count(item.height) + accepted_at.get(item.height, 0) >= self._quorum:
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

    def _check(self, item: BlockSignature) -> bool | None:
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
        """New blocks or member keys were applied: pending signatures may
        verify now, and our own may count."""
        self._retry_pending()
        self._advance()

    def _own_key_recorded(self) -> bool:
        """Our own signatures count only once the ledger records our key: a
        certificate must be checkable against the ledger alone."""
        if not self._recorded:
            self._recorded = self._machine.member_key(self._node_id) == self._key.public
        return self._recorded

    def _count(self, height: int) -> int:
        signers = self._signers.get(height, ())
        if self._node_id in signers and not self._own_key_recorded():
            return len(signers) - 1
        return len(signers)

    def _advance(self) -> None:
        start = self._certified
        while self._count(self._certified + 1) >= self._quorum:
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

    def signatures_between(self, first: int, last: int) -> list[BlockSignature]:
        out: list[BlockSignature] = []
        for height in range(max(1, first), min(last, first + MAX_RANGE - 1, self._machine.height) + 1):
            block = self._machine.get_block(height)
            if block is None:
                break
            out.extend(
                BlockSignature(height, block.hash, nid, sig)
                for nid, sig in self._storage.signatures(height)
            )
        return out

    def certificate(self, height: int) -> list[tuple[str, bytes]]:
        return self._storage.signatures(height)


class CertificationLoop:
    def __init__(
        self,
        config: RuntimeConfig,
        certifier: Certifier,
        store: LedgerStore,
        machine: LedgerMachine,
        transport: PeerTransport,
        submit: Callable[[bytes, RequestKey, float], asyncio.Future[object]],
        has_leader: Callable[[], bool],
    ) -> None:
        self._config = config
        self.certifier = certifier
        self._store = store
        self._machine = machine
        self._transport = transport
        self._submit = submit
        self._has_leader = has_leader
        self._to_sign: list[BlockData] = certifier.unsigned()
        self._to_push: list[BlockSignature] = []
        self._stopped = False

    def replace(self, certifier: Certifier) -> None:
        """A snapshot replaced the applied state: a new certifier over it."""
        self.certifier = certifier
        self._to_sign = certifier.unsigned()

    def applied(self, blocks: list[BlockData]) -> None:
        """Blocks applied here: signed and pushed by the loop, off the commit path."""
        self._to_sign.extend(blocks)

    def _sign_applied(self) -> None:
        if self._to_sign:
            blocks, self._to_sign = self._to_sign, []
            self._to_push.extend(self.certifier.sign_blocks(blocks))

    def push(self) -> None:
        self._sign_applied()
        if self._to_push:
            signed, self._to_push = self._to_push, []
            self._transport.share_signatures(signed)

    def receive(self, items: Iterable[BlockSignature]) -> None:
        """Peers' block signatures. Our own go first: a height we signed
        needs one peer signature less, and each one not needed is a verify
        saved. (Signed now, pushed with the next round: no extra RPC.)"""
        self._sign_applied()
        self.certifier.receive(items)

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        config = self._config
        registered = False
        rounds = max(1, round(config.certify_interval_s / config.sign_interval_s))
        stalled_at = (-1, 0)  # (certified height, rounds it has not moved while lagging)
        tick = 0
        node_id = config.node_id
        while not self._stopped:
            await asyncio.sleep(config.sign_interval_s)
            self.push()
            tick += 1
            if tick % rounds:
                continue
            certifier = self.certifier
            registered = registered and self._machine.member_key(node_id) == certifier.public_key
            if not registered:
                # Registered once the ledger holds our key; a node removed and
                # added again (its key forgotten) registers anew.
                registered = self._machine.member_key(node_id) == certifier.public_key
                if not registered and self._has_leader():
                    self._register(certifier)
            certifier.on_applied()
            gap = certifier.missing()
            if gap is None:
                stalled_at = (-1, 0)
                continue
            height = certifier.certified_height
            stalled_at = (height, stalled_at[1] + 1) if stalled_at[0] == height else (height, 0)
            if stalled_at[1] >= config.pull_after_rounds:
                certifier.receive(await self._transport.fetch_signatures(*gap))

    def _register(self, certifier: Certifier) -> None:
        """Submit this node's key with its proof of possession. A key
        registration already applied (before a removal) would be answered as
        a duplicate: take the first request id not used yet."""
        client_id = f"node/{self._config.node_id}"
        request_id = int.from_bytes(certifier.public_key[:6], "big") << 8
        while self._store.get_request(RequestKey(client_id, request_id)) is not None:
            request_id += 1
        payload = encode_key_registration(RequestKey(client_id, request_id), certifier.key_registration())
        fut = self._submit(payload, RequestKey(client_id, request_id), 5.0)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retried next round
