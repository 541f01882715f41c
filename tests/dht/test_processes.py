"""Five real dht processes: crash two holders, read everywhere, repair, bit rot."""

from __future__ import annotations

import hashlib
import pathlib
import random
from collections.abc import Iterator

import pytest
import rocksdict

from services.dht.content import decode_root, parse_id
from tests.dht.procs import DhtProcess, start_cluster, wait_until

MIB = 1024 * 1024


@pytest.fixture
def five(tmp_path: pathlib.Path) -> Iterator[list[DhtProcess]]:
    nodes = start_cluster(tmp_path, 5, ["--repair-interval-ms", "500"])
    try:
        yield nodes
    finally:
        for node in nodes:
            node.kill()


def stored(db: rocksdict.Rdict, key: bytes) -> bytes:
    value = db[key]
    assert isinstance(value, bytes), key
    return value


def corrupt_one_chunk(node: DhtProcess, cid: str, index: int) -> None:
    """Overwrite one stored chunk of a *stopped* node's RocksDB (see store.py layout)."""
    db = rocksdict.Rdict(str(node.data / "blobs"), options=rocksdict.Options(raw_mode=True))
    try:
        root = decode_root(stored(db, b"r" + parse_id(cid)))
        key = b"c" + root.chunks[index]
        original = stored(db, key)
        db[key] = bytes(len(original))  # same length, all zeros
    finally:
        db.close()


@pytest.mark.slow
def test_crash_two_holders_read_everywhere_repair_and_bit_rot(five: list[DhtProcess]) -> None:
    for node in five:
        wait_until(node.healthy, 30, f"{node.name} healthy")
    data = random.Random(4).randbytes(64 * MIB)
    digest = hashlib.sha256(data).hexdigest()
    origin = five[0]
    cid = origin.put(data)
    assert cid == "sha256:" + digest
    del data

    def holders() -> list[DhtProcess]:
        return [n for n in five if n.alive() and n.is_local(cid)]

    wait_until(lambda: len(holders()) >= 3, 60, "3 replicas")
    print("holders after put:", [n.name for n in holders()])

    victims = [n for n in holders() if n is not origin][:2]
    for victim in victims:
        victim.kill()  # kill -9
    survivors = [n for n in five if n.alive()]
    print("killed:", [v.name for v in victims], "survivors:", [n.name for n in survivors])

    # Repair: the survivors restore k = 3 replicas on their own.
    wait_until(lambda: len(holders()) >= 3, 60, "k replicas again after repair")
    assert (
        sum(n.metric("fleetsuit_dht_repair_actions_total", 'kind="replica"') for n in survivors)
        >= 1
    )

    for node in survivors:
        assert node.sha256_of(cid) == (digest, 64 * MIB), node.name

    # Resume: a Get interrupted halfway, restarted from its offset.
    h = hashlib.sha256()
    got = survivors[-1].read_into(cid, h, stop_after=32 * MIB)
    assert 32 * MIB <= got < 64 * MIB
    got += survivors[-1].read_into(cid, h, offset=got)
    assert (h.hexdigest(), got) == (digest, 64 * MIB)

    # Bit rot: stop a holder, corrupt one chunk in its RocksDB, restart it.
    rotten = next(n for n in survivors if n is not origin)
    rotten.stop()
    corrupt_one_chunk(rotten, cid, index=5)
    rotten.start()
    wait_until(rotten.healthy, 30, "restarted node healthy")
    assert rotten.sha256_of(cid) == (digest, 64 * MIB)  # never serves the rotten chunk
    assert rotten.metric("fleetsuit_dht_corrupt_chunks_total", 'where="disk"') >= 1
    assert rotten.metric("fleetsuit_dht_repair_actions_total", 'kind="chunk"') >= 1
    rotten.stop()
    db = rocksdict.Rdict(str(rotten.data / "blobs"), options=rocksdict.Options(raw_mode=True))
    try:
        root = decode_root(stored(db, b"r" + parse_id(cid)))
        chunk = stored(db, b"c" + root.chunks[5])
        assert hashlib.sha256(chunk).digest() == root.chunks[5]  # repaired on disk
    finally:
        db.close()
