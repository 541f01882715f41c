"""The in-memory twins of the ports (raft/memory.py)."""

from __future__ import annotations

import pytest

from services.consensus.ledger.keys import RequestKey
from services.consensus.raft.memory import (
    Deduplicator,
    MemoryApplication,
    MemoryAssembler,
    MemoryStorage,
    MemoryTransport,
    PrefixInspector,
)
from services.consensus.raft.types import Entry, EntryType, HardState, Message, MessageType


def test_storage_appends_and_truncates_at_the_first_saved_index() -> None:
    s = MemoryStorage()
    s.save(HardState(1, "n1", 0), [Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    s.save(None, [Entry(2, 2)])
    hs, log = s.load()
    assert hs == HardState(1, "n1", 0)
    assert [(e.index, e.term) for e in log] == [(1, 1), (2, 2)]


def test_storage_refuses_a_gap_and_a_closed_store() -> None:
    s = MemoryStorage()
    with pytest.raises(ValueError):
        s.save(None, [Entry(1, 2)])
    s.close()
    with pytest.raises(RuntimeError):
        s.save(None, [Entry(1, 1)])


def test_transport_collects_messages() -> None:
    t = MemoryTransport()
    m = Message(MessageType.APPEND, "a", "b", 1)
    t.send([m, m])
    assert t.take() == [m, m] and t.take() == []


@pytest.mark.parametrize(
    ("payloads", "max_count", "max_bytes", "first_batch"),
    [
        ([b"a", b"b", b"c"], 2, 100, [b"a", b"b"]),
        ([b"aa", b"bb", b"cc"], 10, 4, [b"aa", b"bb"]),
        ([b"x" * 10, b"y"], 10, 4, [b"x" * 10]),  # one oversized payload still goes
        ([], 10, 10, []),
    ],
)
def test_assembler_is_fifo_within_limits(
    payloads: list[bytes], max_count: int, max_bytes: int, first_batch: list[bytes]
) -> None:
    a = MemoryAssembler()
    for p in payloads:
        a.add(p)
    assert a.take(max_count, max_bytes) == first_batch
    assert len(a) == len(payloads) - len(first_batch)


def test_inspector_round_trips_keys_and_ignores_other_payloads() -> None:
    ins = PrefixInspector()
    key = RequestKey("client-1", 42)
    assert ins.key_of(PrefixInspector.encode(key, b"body/with/slashes")) == key
    assert ins.key_of(b"no key here") is None
    assert ins.key_of(b"a/notanumber/x") is None


def test_deduplicator_and_application_apply_a_retried_request_once() -> None:
    d = Deduplicator()
    k = RequestKey("c", 1)
    assert d.first_time(k) and not d.first_time(k) and d.first_time(None)
    app = MemoryApplication()
    p = PrefixInspector.encode(k, b"v")
    results = app.apply([Entry(1, 1, EntryType.NOOP), Entry(1, 2, data=p), Entry(2, 3, data=p)])
    assert results == [None, 1, None]
    assert app.state == [p] and app.applied_index() == 3
    with pytest.raises(ValueError):
        app.apply([Entry(2, 9)])
