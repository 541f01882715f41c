"""Durable Raft state on RocksDB (rocksdict): the hard state, the log, and the
applied ledger (blocks, the request table) in one database per node.

On-disk format, version 1 (all integers big-endian):

    m/format       -> b"1"
    m/identity     -> b"<cluster_id>\\n<node_id>"
    m/hard_state   -> record(u64 term | u64 commit | vote utf-8)
    m/compacted    -> record(JSON {index, term, voters, learners}): the log
                      starts after this point (absent: nothing compacted)
    l/<u64 index>  -> record(u64 term | u8 type | data)
    a/applied      -> u64 applied index
    b/<u64 height> -> record(encoded Block protobuf)
    r/<client_id>\\x00<u64 request_id> -> u64 index | u64 height
    k/<node_id>    -> raw Ed25519 public key recorded in the ledger (applied state)
    s/<u64 height><node_id> -> a node's signature over that block's hash
    a/certified    -> u64 height up to which every block has a majority certificate
    p/<node_id>    -> a member's peer address (applied state, from CONFIG entries)

The applied state (a/, b/, r/, k/, s/, p/) is what a snapshot holds
(``ledger/snapshot.py``); ``install_snapshot`` replaces it and the whole log
in one atomic batch, so a crash leaves either the old state or the new one.
The applied state lives here, durable, so compacting the log needs no
snapshot file (etcd's backend works the same way): ``compact_log`` deletes
the log up to an applied index and records that point, in one synced batch.
A file is written only when a follower needs one (runtime.py).

where record(x) = u32 crc32(x) | x. A record whose checksum does not match
stops the node with StorageCorrupt; nothing is rewritten to "repair" it.

Raft writes (``save``) are synced before returning when they hold entries or a
new term or vote: one sync per Ready, which is the group commit. A Ready that
only moves the commit index is written without a sync (commitIndex is
volatile state in Raft; a restarted node learns it again from the leader). Ledger writes (``write_applied``) are not synced: they
can be rebuilt from the synced log, and the applied index is written in the
same atomic batch as the blocks it covers.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from rocksdict import BlockBasedOptions, Options, Rdict, WriteBatch, WriteOptions

from .errors import StorageCorrupt, StorageError, StorageFull, WrongDataDirectory
from .ledger.snapshot import ALLOWED_KEYS, ALLOWED_PREFIXES
from .raft.types import Entry, EntryType, HardState, SnapshotMeta

FORMAT_VERSION = b"1"
_U64 = struct.Struct(">Q")
_ENTRY_HEAD = struct.Struct(">QB")
_HS_HEAD = struct.Struct(">QQ")
_ANSWER = struct.Struct(">QQ")  # a request's stored answer: index, block height

K_FORMAT = b"m/format"
K_IDENTITY = b"m/identity"
K_HARD_STATE = b"m/hard_state"
K_COMPACTED = b"m/compacted"
K_APPLIED = b"a/applied"
P_LOG = b"l/"
P_BLOCK = b"b/"
P_REQUEST = b"r/"
P_KEY = b"k/"
P_SIGNATURE = b"s/"
K_CERTIFIED = b"a/certified"
P_ADDRESS = b"p/"


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _record(payload: bytes) -> bytes:
    return struct.pack(">I", zlib.crc32(payload)) + payload


def _unrecord(key: bytes, raw: bytes) -> bytes:
    if len(raw) < 4:
        raise StorageCorrupt(f"record {key!r} is truncated ({len(raw)} bytes)")
    (crc,) = struct.unpack_from(">I", raw)
    payload = raw[4:]
    if zlib.crc32(payload) != crc:
        raise StorageCorrupt(f"record {key!r} fails its checksum")
    return payload


def log_key(index: int) -> bytes:
    return P_LOG + _U64.pack(index)


def block_key(height: int) -> bytes:
    return P_BLOCK + _U64.pack(height)


def request_key(client_id: str, request_id: int) -> bytes:
    return P_REQUEST + client_id.encode() + b"\x00" + _U64.pack(request_id)


def encode_entry(entry: Entry) -> bytes:
    return _record(_ENTRY_HEAD.pack(entry.term, int(entry.type)) + entry.data)


def decode_entry(index: int, raw: bytes) -> Entry:
    payload = _unrecord(log_key(index), raw)
    term, etype = _ENTRY_HEAD.unpack_from(payload)
    try:
        kind = EntryType(etype)
    except ValueError:
        raise StorageCorrupt(f"log entry {index} has unknown type {etype}") from None
    return Entry(term=term, index=index, type=kind, data=payload[_ENTRY_HEAD.size :])


def _encode_compacted(meta: SnapshotMeta) -> bytes:
    doc = {"index": meta.index, "term": meta.term, "voters": list(meta.voters), "learners": list(meta.learners)}
    return _record(json.dumps(doc, sort_keys=True).encode())


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no space" in text or "enospc" in text or "disk full" in text


@dataclass(frozen=True, slots=True)
class StateView:
    applied: int
    height: int
    small: list[tuple[bytes, bytes]]


class RocksStorage:
    """Storage (roles.Storage) plus the ledger's applied state, on one RocksDB."""

    def __init__(self, path: str, *, node_id: str, cluster_id: str) -> None:
        os.makedirs(path, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Bloom filters: every submission looks its request key up (on the
        # leader twice), and nearly every lookup misses; a filter answers a
        # miss without reading blocks (about 1.2 -> 0.5 µs here).
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        try:
            self._db = Rdict(path, options)
        except Exception as exc:  # rocksdict raises plain Exception
            raise StorageError(f"cannot open data directory {path}: {exc}") from exc
        self._nosync = WriteOptions()
        self.path = path
        try:
            self._check_identity(node_id, cluster_id)
        except Exception:
            self._db.close()
            raise
        self._last_index = self._scan_last_index()
        stored = self.load_hard_state()
        self._durable_term_vote = (stored.term, stored.vote)

    # ------------------------------------------------------------ identity

    def _check_identity(self, node_id: str, cluster_id: str) -> None:
        identity = f"{cluster_id}\n{node_id}".encode()
        fmt = self._db.get(K_FORMAT)
        stored = self._db.get(K_IDENTITY)
        if fmt is None and stored is None:
            batch = WriteBatch(raw_mode=True)
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

    # ------------------------------------------------------------ raft

    def _scan_last_index(self) -> int:
        it = self._db.iter()
        it.seek_for_prev(P_LOG + b"\xff" * 8)
        if it.valid() and bytes(it.key()).startswith(P_LOG):
            return int(_U64.unpack(bytes(it.key())[len(P_LOG) :])[0])
        return 0

    def load_hard_state(self) -> HardState:
        raw = self._db.get(K_HARD_STATE)
        if raw is None:
            return HardState()
        payload = _unrecord(K_HARD_STATE, raw)
        term, commit = _HS_HEAD.unpack_from(payload)
        return HardState(term=term, commit=commit, vote=payload[_HS_HEAD.size :].decode())

    def load(self) -> tuple[HardState, list[Entry]]:
        hard_state = self.load_hard_state()
        entries = list(self.iter_log(1))
        for expected, entry in enumerate(entries, start=entries[0].index if entries else 1):
            if entry.index != expected:
                raise StorageCorrupt(f"log has a gap before index {entry.index}")
        return hard_state, entries

    def iter_log(self, start: int) -> Iterator[Entry]:
        it = self._db.iter()
        it.seek(log_key(start))
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(P_LOG):
                break
            index = int(_U64.unpack(key[len(P_LOG) :])[0])
            yield decode_entry(index, bytes(it.value()))
            it.next()

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
        batch = WriteBatch(raw_mode=True)
        if entries:
            first = entries[0].index
            if first <= self._last_index:
                batch.delete_range(log_key(first), log_key(self._last_index + 1))
            for entry in entries:
                batch.put(log_key(entry.index), encode_entry(entry))
        if hard_state is not None:
            batch.put(
                K_HARD_STATE,
                _record(_HS_HEAD.pack(hard_state.term, hard_state.commit) + hard_state.vote.encode()),
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

    # ------------------------------------------------------------ ledger

    def applied_index(self) -> int:
        raw = self._db.get(K_APPLIED)
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def get_block(self, height: int) -> bytes | None:
        raw = self._db.get(block_key(height))
        return None if raw is None else _unrecord(block_key(height), raw)

    def last_block_height(self) -> int:
        it = self._db.iter()
        it.seek_for_prev(P_BLOCK + b"\xff" * 8)
        if it.valid() and bytes(it.key()).startswith(P_BLOCK):
            return int(_U64.unpack(bytes(it.key())[len(P_BLOCK) :])[0])
        return 0

    def get_request(self, client_id: str, request_id: int) -> tuple[int, int] | None:
        return self.get_request_by_key(request_key(client_id, request_id))

    def get_request_by_key(self, key: bytes) -> tuple[int, int] | None:
        """The (index, block height) answered to the request under ``key``
        (``request_key``), or None: a caller that also writes the answer
        builds the key once."""
        raw = self._db.get(key)
        if raw is None:
            return None
        index, height = _ANSWER.unpack(raw)
        return int(index), int(height)

    def member_key(self, node_id: str) -> bytes | None:
        raw = self._db.get(P_KEY + node_id.encode())
        return None if raw is None else bytes(raw)

    def addresses(self) -> dict[str, str]:
        it = self._db.iter()
        it.seek(P_ADDRESS)
        out = {}
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(P_ADDRESS):
                break
            out[key[len(P_ADDRESS) :].decode()] = bytes(it.value()).decode()
            it.next()
        return out

    def write_applied(
        self,
        applied: int,
        blocks: Sequence[tuple[int, bytes]],
        requests: Sequence[tuple[bytes, int, int]],
        member_keys: Sequence[tuple[str, bytes | None]] = (),
        addresses: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        """Atomically record new blocks, request answers, member keys, peer
        addresses (None: removed) and the applied index."""
        batch = WriteBatch(raw_mode=True)
        for node_id, address in addresses:
            if address is None:
                batch.delete(P_ADDRESS + node_id.encode())
            else:
                batch.put(P_ADDRESS + node_id.encode(), address.encode())
        for height, encoded in blocks:
            batch.put(block_key(height), _record(encoded))
        for key, index, height in requests:  # key: request_key(client_id, request_id)
            batch.put(key, _ANSWER.pack(index, height))
        for node_id, public_key in member_keys:
            if public_key is None:
                batch.delete(P_KEY + node_id.encode())
            else:
                batch.put(P_KEY + node_id.encode(), public_key)
        batch.put(K_APPLIED, _U64.pack(applied))
        self._write(batch, sync=False)

    # ------------------------------------------------------------ snapshots

    def state_view(self) -> StateView:
        """A consistent view of the applied state as of now, readable later
        from another thread with ``state_records`` while the ledger moves on.

        (rocksdict's iterators ignore a RocksDB snapshot, so the view relies
        on what the ledger never rewrites instead: blocks and request answers
        are written once, under a height and an index, so the view keeps the
        bounds and filters by them; the few mutable records (member keys,
        addresses, the applied and certified heights) are copied now.)"""
        small: list[tuple[bytes, bytes]] = []
        for key in (K_APPLIED, K_CERTIFIED):
            raw = self._db.get(key)
            if raw is not None:
                small.append((key, bytes(raw)))
        for prefix in (P_KEY, P_ADDRESS):
            small.extend(self._scan(prefix))
        return StateView(self.applied_index(), self.last_block_height(), small)

    def _scan(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(start or prefix)
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(it.value())
            it.next()

    def state_records(self, view: StateView) -> Iterator[tuple[bytes, bytes]]:
        """Every applied-state record of ``view``."""
        yield from view.small
        for key, value in self._scan(P_BLOCK):
            if _U64.unpack(key[len(P_BLOCK) :])[0] > view.height:
                break
            yield key, value
        for key, value in self._scan(P_SIGNATURE):
            if _U64.unpack(key[len(P_SIGNATURE) : len(P_SIGNATURE) + 8])[0] > view.height:
                break
            yield key, value
        for key, value in self._scan(P_REQUEST):
            if struct.unpack(">QQ", value)[0] <= view.applied:
                yield key, value

    def install_snapshot(self, meta: SnapshotMeta, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the applied state and the whole log with a snapshot, in one
        atomic, synced batch. ``records`` is consumed entirely before anything
        is written: if it raises (a bad snapshot), nothing changes."""
        batch = WriteBatch(raw_mode=True)
        for prefix in (*ALLOWED_PREFIXES, P_LOG):
            batch.delete_range(prefix, _prefix_end(prefix))
        for key in ALLOWED_KEYS:
            batch.delete(key)
        for key, value in records:
            batch.put(key, value)
        batch.put(K_APPLIED, _U64.pack(meta.index))
        batch.put(K_COMPACTED, _encode_compacted(meta))
        self._write(batch, sync=True)
        self._last_index = meta.index

    def compact_log(self, meta: SnapshotMeta) -> None:
        """Raft §7 compaction without a snapshot file: the applied state up to
        ``meta.index`` is here already, so the log up to it is deleted and the
        point recorded, in one synced batch. (The writes that applied those
        entries precede this batch in the WAL, so no crash can keep the
        deletion and lose them.)"""
        if meta.index > self.applied_index():
            raise StorageError(f"cannot compact to {meta.index}: applied only {self.applied_index()}")
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(log_key(0), log_key(meta.index + 1))
        batch.put(K_COMPACTED, _encode_compacted(meta))
        self._write(batch, sync=True)

    def compacted(self) -> SnapshotMeta | None:
        """Where the log starts: the last compaction or installed snapshot."""
        raw = self._db.get(K_COMPACTED)
        if raw is None:
            return None
        try:
            doc = json.loads(_unrecord(K_COMPACTED, raw))
            return SnapshotMeta(
                int(doc["index"]), int(doc["term"]), tuple(doc["voters"]), tuple(doc["learners"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageCorrupt(f"record {K_COMPACTED!r} is malformed: {exc}") from exc

    def sync(self) -> None:
        """Make every write so far durable (before a snapshot is taken of it)."""
        self._write(WriteBatch(raw_mode=True), sync=True)

    # ------------------------------------------------------------ certificates

    def put_signatures(self, items: Sequence[tuple[int, str, bytes]]) -> None:
        batch = WriteBatch(raw_mode=True)
        for height, node_id, signature in items:
            batch.put(P_SIGNATURE + _U64.pack(height) + node_id.encode(), signature)
        self._write(batch, sync=False)

    def signatures(self, height: int) -> list[tuple[str, bytes]]:
        prefix = P_SIGNATURE + _U64.pack(height)
        it = self._db.iter()
        it.seek(prefix)
        out = []
        while it.valid():
            key = bytes(it.key())
            if not key.startswith(prefix):
                break
            out.append((key[len(prefix) :].decode(), bytes(it.value())))
            it.next()
        return out

    def certified_height(self) -> int:
        raw = self._db.get(K_CERTIFIED)
        return 0 if raw is None else int(_U64.unpack(raw)[0])

    def set_certified_height(self, height: int) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(K_CERTIFIED, _U64.pack(height))
        self._write(batch, sync=False)

    # ------------------------------------------------------------ plumbing

    def _write(self, batch: WriteBatch, *, sync: bool) -> None:
        try:
            # A synced write in rocksdict holds the GIL through the fsync and
            # stalls every thread of the process; an unsynced write followed
            # by FlushWAL(sync=true), which releases it, is just as durable.
            self._db.write(batch, self._nosync)
            if sync:
                self._db.flush_wal(True)
        except Exception as exc:  # rocksdict raises plain Exception
            if _is_disk_full(exc):
                raise StorageFull(f"disk full writing to {self.path}: {exc}") from exc
            raise StorageError(f"write to {self.path} failed: {exc}") from exc

    def close(self) -> None:
        self._db.close()
