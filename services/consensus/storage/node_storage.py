"""A node's durable state (the Raft log and hard state, and the ledger's
applied state) on one ordered key-value store: RocksDB in production
(:class:`RocksStorage`), the in-memory twin in tests and the simulation
(:meth:`NodeStorage.in_memory`). The key layout is ``layout.py``'s.

Raft writes (``save``) are synced before returning when they hold entries or
a new term or vote: one sync per Ready, which is the group commit. A Ready
that only moves the commit index is written without a sync (commitIndex is
volatile state in Raft; a restarted node learns it again from the leader).
Ledger writes (``write_applied``) are not synced: they can be rebuilt from
the synced log, and the applied index is written in the same atomic batch as
the blocks it covers.

The applied state lives here, durable, so compacting the log needs no
snapshot file (etcd's backend works the same way): ``compact_log`` deletes
the log up to an applied index and records that point, in one synced batch.
``install_snapshot`` replaces the applied state and the whole log in one
atomic batch, so a crash leaves either the old state or the new one.

A record whose checksum does not match stops the node with StorageCorrupt;
nothing is rewritten to "repair" it. A full disk is StorageFull.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import StorageCorrupt, StorageError, StorageFull, WrongDataDirectory
from ..ledger.entries import Applied
from ..ledger.keys import RequestKey
from ..raft.types import Entry, HardState, SnapshotMeta
from .kv import KeyValue, MemoryKeyValue, RocksKeyValue, WriteBatchLike
from .layout import (
    ANSWER,
    FORMAT_VERSION,
    HS_HEAD,
    K_APPLIED,
    K_CERTIFIED,
    K_COMPACTED,
    K_FORMAT,
    K_HARD_STATE,
    K_IDENTITY,
    P_ADDRESS,
    P_BLOCK,
    P_KEY,
    P_LOG,
    P_REQUEST,
    P_SIGNATURE,
    P_TABLE,
    STATE_KEYS,
    STATE_PREFIXES,
    U64,
    block_key,
    decode_compacted,
    decode_entry,
    encode_compacted,
    encode_entry,
    log_key,
    prefix_end,
    record,
    request_key,
    signature_key,
    table_key,
    table_prefix,
    unrecord,
)

MAX_UNANSWERED = 65_536  # stored keys kept between a lookup that misses and the write


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no space" in text or "enospc" in text or "disk full" in text


@dataclass(frozen=True, slots=True)
class StateView:
    """The bounds of the applied state at one moment (see ``state_view``)."""

    applied: int
    height: int
    small: list[tuple[bytes, bytes]]


class NodeStorage:
    """The log store and the ledger store of one node, on one key-value store."""

    def __init__(self, kv: KeyValue, *, node_id: str, cluster_id: str, where: str) -> None:
        self._kv = kv
        self.path = where
        try:
            self._check_identity(node_id, cluster_id)
        except Exception:
            kv.close()
            raise
        self._unanswered: dict[RequestKey, bytes] = {}  # see get_request
        self._last_index = self._scan_last_index()
        stored = self.load_hard_state()
        self._durable_term_vote = (stored.term, stored.vote)

    @classmethod
    def in_memory(
        cls, *, node_id: str, cluster_id: str, kv: MemoryKeyValue | None = None
    ) -> NodeStorage:
        """The in-memory twin; pass the ``kv`` of a crashed node to restart it."""
        return cls(kv if kv is not None else MemoryKeyValue(), node_id=node_id, cluster_id=cluster_id,
                   where="memory")

    # ------------------------------------------------------------ identity

    def _check_identity(self, node_id: str, cluster_id: str) -> None:
        identity = f"{cluster_id}\n{node_id}".encode()
        fmt = self._kv.get(K_FORMAT)
        stored = self._kv.get(K_IDENTITY)
        if fmt is None and stored is None:
            batch = self._kv.batch()
            batch.put(K_FORMAT, FORMAT_VERSION)
            batch.put(K_IDENTITY, identity)
            self._write(batch, sync=True)
            return
        if fmt != FORMAT_VERSION:
            raise StorageCorrupt(
                f"data directory {self.path} has format {fmt!r}, this build reads {FORMAT_VERSION!r}"
            )
        if stored != identity:
            other_cluster, _, other_node = (stored or b"").decode(errors="replace").partition("\n")
            raise WrongDataDirectory(
                f"data directory {self.path} belongs to node {other_node!r} of cluster "
                f"{other_cluster!r}, not node {node_id!r} of cluster {cluster_id!r}"
            )

    # ------------------------------------------------------------ raft log and hard state

    def _scan_last_index(self) -> int:
        key = self._kv.last_key(P_LOG)
        return 0 if key is None else int(U64.unpack(key[len(P_LOG) :])[0])

    def load_hard_state(self) -> HardState:
        raw = self._kv.get(K_HARD_STATE)
        if raw is None:
            return HardState()
        payload = unrecord(K_HARD_STATE, raw)
        term, commit = HS_HEAD.unpack_from(payload)
        return HardState(term=term, commit=commit, vote=payload[HS_HEAD.size :].decode())

    def load(self) -> tuple[HardState, list[Entry]]:
        hard_state = self.load_hard_state()
        entries = list(self.iter_log(1))
        for expected, entry in enumerate(entries, start=entries[0].index if entries else 1):
            if entry.index != expected:
                raise StorageCorrupt(f"log has a gap before index {entry.index}")
        return hard_state, entries

    def iter_log(self, start: int) -> Iterator[Entry]:
        for key, value in self._kv.scan(log_key(start), P_LOG):
            yield decode_entry(int(U64.unpack(key[len(P_LOG) :])[0]), value)

    def needs_sync(self, hard_state: HardState | None, entries: Sequence[Entry]) -> bool:
        """Entries, a term or a vote must be durable before messages go out; a
        commit index alone need not be (Raft Figure 2: commitIndex is volatile
        state; etcd's MustSync makes the same call)."""
        if entries:
            return True
        if hard_state is None:
            return False
        return (hard_state.term, hard_state.vote) != self._durable_term_vote

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        if hard_state is None and not entries:
            return
        sync = self.needs_sync(hard_state, entries)
        batch = self._kv.batch()
        if entries:
            first = entries[0].index
            if first <= self._last_index:
                batch.delete_range(log_key(first), log_key(self._last_index + 1))
            for entry in entries:
                batch.put(log_key(entry.index), encode_entry(entry))
        if hard_state is not None:
            batch.put(
                K_HARD_STATE,
                record(HS_HEAD.pack(hard_state.term, hard_state.commit) + hard_state.vote.encode()),
            )
        self._write(batch, sync=sync)
        if entries:
            self._last_index = entries[-1].index
        if hard_state is not None:
            self._durable_term_vote = (hard_state.term, hard_state.vote)

    def is_blank(self) -> bool:
        """Nothing stored yet: no term, no vote, no log, nothing applied."""
        return self.load_hard_state() == HardState() and self._last_index == 0 and self.applied_index() == 0

    @property
    def last_index(self) -> int:
        return self._last_index

    def compact_log(self, meta: SnapshotMeta) -> None:
        """Raft §7 compaction without a snapshot file: the applied state up to
        ``meta.index`` is here already, so the log up to it is deleted and the
        point recorded, in one synced batch. (The writes that applied those
        entries precede this batch, so no crash can keep the deletion and
        lose them.)"""
        if meta.index > self.applied_index():
            raise StorageError(f"cannot compact to {meta.index}: applied only {self.applied_index()}")
        batch = self._kv.batch()
        batch.delete_range(log_key(0), log_key(meta.index + 1))
        batch.put(K_COMPACTED, encode_compacted(meta))
        self._write(batch, sync=True)

    def compacted(self) -> SnapshotMeta | None:
        """Where the log starts: the last compaction or installed snapshot."""
        raw = self._kv.get(K_COMPACTED)
        return None if raw is None else decode_compacted(raw)

    def sync(self) -> None:
        """Make every write so far durable (before a snapshot is taken of it)."""
        self._write(self._kv.batch(), sync=True)

    # ------------------------------------------------------------ ledger (applied state)

    def applied_index(self) -> int:
        raw = self._kv.get(K_APPLIED)
        return 0 if raw is None else int(U64.unpack(raw)[0])

    def get_block(self, height: int) -> bytes | None:
        raw = self._kv.get(block_key(height))
        return None if raw is None else unrecord(block_key(height), raw)

    def last_block_height(self) -> int:
        key = self._kv.last_key(P_BLOCK)
        return 0 if key is None else int(U64.unpack(key[len(P_BLOCK) :])[0])

    def get_request(self, key: RequestKey) -> Applied | None:
        """The first answer given to the request ``key`` (``duplicate`` set),
        or None. A key not found is likely written next (``write_applied``):
        its stored form is kept until then, so it is built once per request."""
        stored = self._unanswered.get(key)
        if stored is None:
            stored = request_key(key.client_id, key.request_id)
        raw = self._kv.get(stored)
        if raw is None:
            if len(self._unanswered) >= MAX_UNANSWERED:
                self._unanswered.clear()
            self._unanswered[key] = stored
            return None
        index, height, position, digest = ANSWER.unpack_from(raw)
        outcome, message = "", ""
        if len(raw) > ANSWER.size:
            outcome, _, message = raw[ANSWER.size :].decode().partition("\n")
        return Applied(key, int(index), int(height), True, int(position), bytes(digest), outcome, message)

    def member_key(self, node_id: str) -> bytes | None:
        return self._kv.get(P_KEY + node_id.encode())

    def table_get(self, table: str, key: str) -> bytes | None:
        return self._kv.get(table_key(table, key))

    def table_scan(self, table: str) -> list[tuple[str, bytes]]:
        prefix = table_prefix(table)
        return [(k[len(prefix) :].decode(), v) for k, v in self._kv.scan(prefix, prefix)]

    def addresses(self) -> dict[str, str]:
        return {
            key[len(P_ADDRESS) :].decode(): value.decode() for key, value in self._kv.scan(P_ADDRESS, P_ADDRESS)
        }

    def write_applied(
        self,
        applied: int,
        blocks: Sequence[tuple[int, bytes]],
        requests: Sequence[Applied],
        member_keys: Sequence[tuple[str, bytes | None]] = (),
        addresses: Sequence[tuple[str, str | None]] = (),
        tables: Sequence[tuple[str, str, bytes | None]] = (),
    ) -> None:
        """Atomically record new blocks, request answers, member keys, peer
        addresses and release-state records (None: removed) and the applied
        index."""
        batch = self._kv.batch()
        for table, key, value in tables:
            if value is None:
                batch.delete(table_key(table, key))
            else:
                batch.put(table_key(table, key), value)
        for node_id, address in addresses:
            if address is None:
                batch.delete(P_ADDRESS + node_id.encode())
            else:
                batch.put(P_ADDRESS + node_id.encode(), address.encode())
        for height, encoded in blocks:
            batch.put(block_key(height), record(encoded))
        unanswered = self._unanswered
        pack = ANSWER.pack
        for answer in requests:
            request = answer.key
            if request is None:
                continue
            stored = unanswered.pop(request, None) or request_key(request.client_id, request.request_id)
            value = pack(answer.index, answer.block_height, answer.position, answer.digest)
            if answer.outcome:
                value += f"{answer.outcome}\n{answer.message}".encode()
            batch.put(stored, value)
        for node_id, public_key in member_keys:
            if public_key is None:
                batch.delete(P_KEY + node_id.encode())
            else:
                batch.put(P_KEY + node_id.encode(), public_key)
        batch.put(K_APPLIED, U64.pack(applied))
        self._write(batch, sync=False)

    # ------------------------------------------------------------ snapshots

    def state_view(self) -> StateView:
        """A consistent view of the applied state as of now, readable later
        from another thread with ``state_records`` while the ledger moves on.

        (rocksdict's iterators ignore a RocksDB snapshot, so the view relies
        on what the ledger never rewrites instead: blocks and request answers
        are written once, under a height and an index, so the view keeps the
        bounds and filters by them; the mutable records (release-state tables, member keys,
        addresses, the applied and certified heights) are copied now.)"""
        small: list[tuple[bytes, bytes]] = []
        for key in (K_APPLIED, K_CERTIFIED):
            raw = self._kv.get(key)
            if raw is not None:
                small.append((key, raw))
        for prefix in (P_KEY, P_ADDRESS, P_TABLE):
            small.extend(self._kv.scan(prefix, prefix))
        return StateView(self.applied_index(), self.last_block_height(), small)

    def state_records(self, view: StateView) -> Iterator[tuple[bytes, bytes]]:
        """Every applied-state record of ``view``."""
        yield from view.small
        for key, value in self._kv.scan(P_BLOCK, P_BLOCK):
            if U64.unpack(key[len(P_BLOCK) :])[0] > view.height:
                break
            yield key, value
        for key, value in self._kv.scan(P_SIGNATURE, P_SIGNATURE):
            if U64.unpack(key[len(P_SIGNATURE) : len(P_SIGNATURE) + 8])[0] > view.height:
                break
            yield key, value
        for key, value in self._kv.scan(P_REQUEST, P_REQUEST):
            if ANSWER.unpack_from(value)[0] <= view.applied:
                yield key, value

    def install_snapshot(self, meta: SnapshotMeta, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the applied state and the whole log with a snapshot, in one
        atomic, synced batch. ``records`` is consumed entirely before anything
        is written: if it raises (a bad snapshot), nothing changes."""
        batch = self._kv.batch()
        for prefix in (*STATE_PREFIXES, P_LOG):
            batch.delete_range(prefix, prefix_end(prefix))
        for key in STATE_KEYS:
            batch.delete(key)
        for key, value in records:
            batch.put(key, value)
        batch.put(K_APPLIED, U64.pack(meta.index))
        batch.put(K_COMPACTED, encode_compacted(meta))
        self._write(batch, sync=True)
        self._last_index = meta.index

    # ------------------------------------------------------------ certificates

    def put_signatures(self, items: Sequence[tuple[int, str, bytes]]) -> None:
        batch = self._kv.batch()
        for height, node_id, signature in items:
            batch.put(signature_key(height, node_id), signature)
        self._write(batch, sync=False)

    def signatures(self, height: int) -> list[tuple[str, bytes]]:
        prefix = P_SIGNATURE + U64.pack(height)
        return [(key[len(prefix) :].decode(), value) for key, value in self._kv.scan(prefix, prefix)]

    def certified_height(self) -> int:
        raw = self._kv.get(K_CERTIFIED)
        return 0 if raw is None else int(U64.unpack(raw)[0])

    def set_certified_height(self, height: int) -> None:
        batch = self._kv.batch()
        batch.put(K_CERTIFIED, U64.pack(height))
        self._write(batch, sync=False)

    # ------------------------------------------------------------ plumbing

    def _write(self, batch: WriteBatchLike, *, sync: bool) -> None:
        try:
            self._kv.write(batch, sync=sync)
        except Exception as exc:  # rocksdict raises plain Exception
            if _is_disk_full(exc):
                raise StorageFull(f"disk full writing to {self.path}: {exc}") from exc
            raise StorageError(f"write to {self.path} failed: {exc}") from exc

    def close(self) -> None:
        self._kv.close()


class RocksStorage(NodeStorage):
    """NodeStorage on a RocksDB in ``path``."""

    def __init__(self, path: str, *, node_id: str, cluster_id: str) -> None:
        try:
            kv = RocksKeyValue(path)
        except Exception as exc:  # rocksdict raises plain Exception
            raise StorageError(f"cannot open data directory {path}: {exc}") from exc
        super().__init__(kv, node_id=node_id, cluster_id=cluster_id, where=path)
