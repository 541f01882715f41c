"""What must hold of whole consensus nodes, checked incrementally while the
simulation runs (``check``) and once it has healed (``check_converged``):

- Election safety: at most one leader per term.
- One chain: the block at a height has the same hash on every node, and
  links to the block below (every node builds the same chain, whatever it
  lived through: crashes, restarts, snapshots installed).
- At most once: a request key is applied in one block only, on every node.
- Acknowledged answers are true: an answer (index, height, position) given
  to a client is one of an entry in effect (no refusal), and names a block
  at that height, on every node, that covers that index and holds, at that
  position, the very bytes the client submitted; a retried key gets the
  first answer.
- Definite failures are definite: a key whose every attempt failed with a
  definite error (it never left the node it was submitted to) is in no
  block, ever.
- Certificates: a height a node calls certified has signatures from a
  majority of the voters, each one valid against the key the ledger records
  for its signer (or recorded: a node removed and added again has no key
  recorded until it registers again, and its old signatures still count)
  and the block's hash.
- Convergence (after healing): every node has the same height, every
  acknowledged entry is in the chain, and every block is certified.

What must hold of the release state is checked by ``releases.py``.
"""

from __future__ import annotations

from services.consensus.ledger.block import GENESIS_HASH, block_hash
from services.consensus.ledger.certify import block_message, quorum, verify
from services.consensus.ledger.codec import decode_entry
from services.consensus.ledger.keys import RequestKey, entry_digest
from services.consensus.ledger.machine import Applied
from services.consensus.raft.types import Role
from services.consensus.runtime import ConsensusNode


class InvariantViolation(AssertionError):
    pass


class LedgerChecker:
    def __init__(self, cluster_id: str, voters: tuple[str, ...]) -> None:
        self._cluster_id = cluster_id
        self._voters = voters
        self.hashes: dict[int, bytes] = {0: GENESIS_HASH}
        self._key_height: dict[RequestKey, int] = {}
        self._leaders: dict[int, str] = {}
        self._checked: dict[str, int] = {}  # node -> height checked
        self._certified: dict[str, int] = {}  # node -> certified height checked
        self.acks: dict[RequestKey, tuple[int, int, int]] = {}  # key -> (index, height, position)
        self._acks_at: dict[int, list[tuple[RequestKey, int, int, bytes]]] = {}
        self._entry_at: dict[tuple[int, int], bytes] = {}  # (height, position) -> digest of the entry
        self._never: set[RequestKey] = set()
        # (key, message, signature) triples that verify: every node holds
        # the same signatures, and Ed25519 verification is most of what the
        # checks cost.
        self._verified: set[tuple[bytes, bytes, bytes]] = set()
        self._member_keys: dict[str, set[bytes]] = {}  # signer -> every key a ledger recorded for it

    def acknowledged(self, answer: Applied, digest: bytes) -> None:
        """A client got ``answer`` for the entry whose bytes have ``digest``."""
        key = answer.key
        assert key is not None
        if answer.outcome:
            raise InvariantViolation(f"{key} acknowledged as applied, yet refused: {answer.outcome}")
        if answer.digest != digest:
            raise InvariantViolation(f"{key} acknowledged with the digest of another entry")
        where = (answer.index, answer.block_height, answer.position)
        first = self.acks.setdefault(key, where)
        if first != where:
            raise InvariantViolation(f"{key} answered {first} first, then {where}")
        index, height, position = where
        if (key, index, position, digest) in self._acks_at.get(height, []):
            return
        self._acks_at.setdefault(height, []).append((key, index, position, digest))
        if height in self.hashes:
            self._check_ack(key, height, position, digest)

    def never_applied(self, key: RequestKey) -> None:
        """Every attempt to submit ``key`` failed definitely: it must never
        be in a block."""
        self._never.add(key)
        if key in self._key_height:
            raise InvariantViolation(
                f"{key} failed definitely on every attempt, yet is in block {self._key_height[key]}"
            )

    def _check_ack(self, key: RequestKey, height: int, position: int, digest: bytes) -> None:
        if self._key_height.get(key) != height:
            raise InvariantViolation(f"{key} was answered with block {height}, which lacks it")
        if self._entry_at.get((height, position)) != digest:
            raise InvariantViolation(f"{key} was answered with position {position} of block {height}, "
                                     "which holds another entry")

    def restarted(self, node_id: str) -> None:
        """A node came back: its chain is checked again from the start."""
        self._checked[node_id] = 0
        self._certified[node_id] = 0

    def check(self, nodes: dict[str, ConsensusNode]) -> None:
        for node_id, node in nodes.items():
            if node.role is Role.LEADER:
                term = node.status().term
                other = self._leaders.setdefault(term, node_id)
                if other != node_id:
                    raise InvariantViolation(f"two leaders in term {term}: {other} and {node_id}")
            self._check_chain(node_id, node)
            self._check_certificates(node_id, node)

    def _check_chain(self, node_id: str, node: ConsensusNode) -> None:
        machine = node.machine
        for height in range(self._checked.get(node_id, 0) + 1, machine.height + 1):
            block = machine.get_block(height)
            if block is None:
                raise InvariantViolation(f"{node_id} lost block {height} (head {machine.height})")
            expected = block_hash(
                block.height, block.prev_hash, block.first_index, block.last_index, block.term, block.entries
            )
            if block.hash != expected:
                raise InvariantViolation(f"{node_id}: block {height} does not hash to its hash")
            known = self.hashes.setdefault(height, block.hash)
            if known != block.hash:
                raise InvariantViolation(f"{node_id} holds another block at height {height}")
            if block.prev_hash != self.hashes.get(height - 1, block.prev_hash):
                raise InvariantViolation(f"{node_id}: block {height} does not link to block {height - 1}")
            for position, payload in enumerate(block.entries):
                if (height, position) not in self._entry_at:
                    self._entry_at[height, position] = entry_digest(payload)
                view = decode_entry(payload)
                key = view.key if view is not None else None
                if key is None:
                    continue
                where = self._key_height.setdefault(key, height)
                if where != height:
                    raise InvariantViolation(f"{key} applied twice: in blocks {where} and {height}")
                if key in self._never:
                    raise InvariantViolation(f"{key} failed definitely on every attempt, yet is in block {height}")
            for key, index, position, digest in self._acks_at.get(height, ()):
                self._check_ack(key, height, position, digest)
                if not block.first_index <= index <= block.last_index:
                    raise InvariantViolation(f"{key} was answered with index {index}, outside block {height}")
            self._checked[node_id] = height

    def _check_certificates(self, node_id: str, node: ConsensusNode) -> None:
        certifier = node.certifier
        if certifier is None:
            return
        certified = certifier.certified_height
        if certified > node.machine.height:
            raise InvariantViolation(f"{node_id} certified {certified} beyond its head {node.machine.height}")
        need = quorum(len(self._voters))
        for height in range(self._certified.get(node_id, 0) + 1, certified + 1):
            block = node.machine.get_block(height)
            assert block is not None
            message = block_message(self._cluster_id, height, block.hash)
            valid = set()
            for signer, signature in certifier.certificate(height):
                key = node.machine.member_key(signer)
                keys = self._member_keys.setdefault(signer, set())
                if key is not None:
                    keys.add(key)
                if signer in self._voters and any(self._verify(k, message, signature) for k in keys):
                    valid.add(signer)
            if len(valid) < need:
                raise InvariantViolation(
                    f"{node_id} calls block {height} certified with {len(valid)} valid signature(s) of "
                    f"{len(self._voters)} voters"
                )
            self._certified[node_id] = height

    def _verify(self, key: bytes, message: bytes, signature: bytes) -> bool:
        triple = (key, message, signature)
        if triple in self._verified:
            return True
        if verify(key, message, signature):
            self._verified.add(triple)
            return True
        return False

    def converged(self, nodes: dict[str, ConsensusNode]) -> str | None:
        """None once every node agrees and is done; else what is missing."""
        heights = {n: node.machine.height for n, node in nodes.items()}
        if len(set(heights.values())) != 1:
            return f"heights differ: {heights}"
        missing = [k for k in self.acks if k not in self._key_height]
        if missing:
            return f"acknowledged but not in the chain: {missing[:3]}"
        uncertified = {n: (node.certifier.certified_height if node.certifier else -1, heights[n])
                       for n, node in nodes.items()
                       if node.certifier is None or node.certifier.certified_height < heights[n]}
        if uncertified:
            return f"blocks not yet certified (certified, height): {uncertified}"
        return None
