"""The key layout of a node's store, owned here and nowhere else: the hard
state, the Raft log and the applied ledger (blocks, the request table, member
keys, signatures, addresses) in one ordered key-value store per node.

On-disk format, version 1 (all integers big-endian):

    m/format       -> b"1"
    m/identity     -> b"<cluster_id>\\n<node_id>"
    m/hard_state   -> record(u64 term | u64 commit | vote utf-8)
    m/compacted    -> record(JSON {index, term, voters, learners}): the log
                      starts after this point (absent: nothing compacted)
    l/<u64 index>  -> record(u64 term | u8 type | data)
    a/applied      -> u64 applied index
    b/<u64 height> -> record(encoded Block protobuf)
    r/<client_id>\\x00<u64 request_id> -> u64 index | u64 height | u32 position
                      | 16-byte entry digest | outcome utf-8 [\\n message utf-8]
                      (outcome empty: applied; else the refusal code)
    k/<node_id>    -> raw Ed25519 public key recorded in the ledger (applied state)
    s/<u64 height><node_id> -> a node's signature over that block's hash
    a/certified    -> u64 height up to which every block has a majority certificate
    p/<node_id>    -> a member's peer address (applied state, from CONFIG entries)
    t/<table>\\x00<key> -> a record of the ledger's release state (``ledger/releases.py``:
                      releases, sequence numbers, trust anchors, refusals), encoded by
                      ``ledger/codec.py``

The applied state (a/, b/, r/, k/, s/, p/, t/) is what a snapshot holds
(``snapshot_format.py``, ``is_state_key``); ``node_storage.py`` says how
each is written.

where record(x) = u32 crc32(x) | x.
"""

from __future__ import annotations

import json
import struct
import zlib

from ..errors import StorageCorrupt
from ..raft.types import Entry, EntryType, SnapshotMeta

FORMAT_VERSION = b"1"
U64 = struct.Struct(">Q")
ENTRY_HEAD = struct.Struct(">QB")
HS_HEAD = struct.Struct(">QQ")
ANSWER = struct.Struct(">QQI16s")  # a request's stored answer: index, height, position, digest

K_FORMAT = b"m/format"
K_IDENTITY = b"m/identity"
K_HARD_STATE = b"m/hard_state"
K_COMPACTED = b"m/compacted"
K_APPLIED = b"a/applied"
K_CERTIFIED = b"a/certified"
P_LOG = b"l/"
P_BLOCK = b"b/"
P_REQUEST = b"r/"
P_KEY = b"k/"
P_SIGNATURE = b"s/"
P_ADDRESS = b"p/"
P_TABLE = b"t/"

# The applied state: what a snapshot holds and may replace (never the
# identity, the hard state or the log).
STATE_PREFIXES = (P_BLOCK, P_REQUEST, P_KEY, P_SIGNATURE, P_ADDRESS, P_TABLE)
STATE_KEYS = (K_APPLIED, K_CERTIFIED)


def is_state_key(key: bytes) -> bool:
    return key in STATE_KEYS or any(key.startswith(p) for p in STATE_PREFIXES)


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def record(payload: bytes) -> bytes:
    return struct.pack(">I", zlib.crc32(payload)) + payload


def unrecord(key: bytes, raw: bytes) -> bytes:
    if len(raw) < 4:
        raise StorageCorrupt(f"record {key!r} is truncated ({len(raw)} bytes)")
    (crc,) = struct.unpack_from(">I", raw)
    payload = raw[4:]
    if zlib.crc32(payload) != crc:
        raise StorageCorrupt(f"record {key!r} fails its checksum")
    return payload


def log_key(index: int) -> bytes:
    return P_LOG + U64.pack(index)


def block_key(height: int) -> bytes:
    return P_BLOCK + U64.pack(height)


def request_key(client_id: str, request_id: int) -> bytes:
    return P_REQUEST + client_id.encode() + b"\x00" + U64.pack(request_id)


def table_key(table: str, key: str) -> bytes:
    return P_TABLE + table.encode() + b"\x00" + key.encode()


def table_prefix(table: str) -> bytes:
    return P_TABLE + table.encode() + b"\x00"


def signature_key(height: int, node_id: str) -> bytes:
    return P_SIGNATURE + U64.pack(height) + node_id.encode()


def encode_entry(entry: Entry) -> bytes:
    return record(ENTRY_HEAD.pack(entry.term, int(entry.type)) + entry.data)


def decode_entry(index: int, raw: bytes) -> Entry:
    payload = unrecord(log_key(index), raw)
    term, etype = ENTRY_HEAD.unpack_from(payload)
    try:
        kind = EntryType(etype)
    except ValueError:
        raise StorageCorrupt(f"log entry {index} has unknown type {etype}") from None
    return Entry(term=term, index=index, type=kind, data=payload[ENTRY_HEAD.size :])


def encode_compacted(meta: SnapshotMeta) -> bytes:
    doc = {"index": meta.index, "term": meta.term, "voters": list(meta.voters), "learners": list(meta.learners)}
    return record(json.dumps(doc, sort_keys=True).encode())


def decode_compacted(raw: bytes) -> SnapshotMeta:
    try:
        doc = json.loads(unrecord(K_COMPACTED, raw))
        return SnapshotMeta(int(doc["index"]), int(doc["term"]), tuple(doc["voters"]), tuple(doc["learners"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageCorrupt(f"record {K_COMPACTED!r} is malformed: {exc}") from exc
