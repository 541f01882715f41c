"""Fetching from peers: partial holders serve chunks, a Get on a node that
lacks the blob streams before the fetch ends, the scrub repairs bit rot,
provider records expire, sources are chosen least-loaded."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht.config import DhtConfig
from services.dht.content import encode_root, parse_id
from services.dht.errors import Busy
from services.dht.fetch import SourcePicker, decode_have, encode_have
from services.dht.kv import MemoryKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.node import DhtNode
from services.dht.routing import Contact, NodeId, node_id_from_name
from services.dht.store import BlobStore
from services.dht.transport import GrpcTransport, PeerTransport
from tests.dht.test_service import CHUNK, Cluster, payload, put, wait_for


class GatedTransport(GrpcTransport):
    """A real transport whose chunk fetches stop after ``allowed`` of them,
    until ``gate`` is set: a fetch frozen halfway, deterministically."""

    def __init__(self, contact: Contact, allowed: int) -> None:
        super().__init__(contact, 1.0, 10.0)
        self.allowed = allowed
        self.gate = asyncio.Event()
        self.blocked = 0

    async def fetch_chunk(self, to: Contact, key: bytes, index: int) -> bytes:
        if self.allowed > 0:
            self.allowed -= 1
        else:
            self.blocked += 1
            await self.gate.wait()
        return await super().fetch_chunk(to, key, index)


async def frozen_fetcher(cluster: Cluster, allowed: int) -> tuple[DhtNode, GatedTransport]:
    gated: list[GatedTransport] = []

    def factory(contact: Contact) -> PeerTransport:
        gated.append(GatedTransport(contact, allowed))
        return gated[0]

    node = await cluster.add(transport_factory=factory)
    return node, gated[0]


@pytest.mark.asyncio
async def test_get_on_a_node_lacking_the_blob_streams_before_the_fetch_ends(
    cluster: Cluster,
) -> None:
    holder = await cluster.add()
    data = payload(12 * CHUNK + 7, seed=21)
    cid = await put(cluster.stub(holder), data)
    lacking, gated = await frozen_fetcher(cluster, allowed=4)
    call = cluster.stub(lacking).Get(dht_pb2.BlobGetRequest(content_id=cid))
    received = bytearray()
    first = await asyncio.wait_for(call.read(), 10)  # arrives while the fetch is frozen
    assert isinstance(first, dht_pb2.BlobGetResponse)
    received += first.data
    assert first.offset == 0 and first.total_size == len(data)
    assert gated.blocked > 0 and not lacking.store.is_complete(parse_id(cid))
    gated.gate.set()
    while (msg := await asyncio.wait_for(call.read(), 10)) is not grpc.aio.EOF:
        assert isinstance(msg, dht_pb2.BlobGetResponse)
        assert msg.offset == len(received)
        received += msg.data
    assert bytes(received) == data
    assert lacking.store.is_complete(parse_id(cid))


@pytest.mark.asyncio
async def test_get_from_an_offset_on_a_lacking_node(cluster: Cluster) -> None:
    holder = await cluster.add()
    data = payload(6 * CHUNK + 3, seed=22)
    cid = await put(cluster.stub(holder), data)
    lacking = await cluster.add()
    offset = 4 * CHUNK + 11
    out = bytearray()
    async for msg in cluster.stub(lacking).Get(
        dht_pb2.BlobGetRequest(content_id=cid, offset=offset)
    ):
        assert msg.offset == offset + len(out)
        out += msg.data
    assert bytes(out) == data[offset:]


@pytest.mark.asyncio
async def test_a_partial_holder_serves_the_chunks_it_holds(cluster: Cluster) -> None:
    holder = await cluster.add()
    data = payload(10 * CHUNK, seed=23)
    cid = await put(cluster.stub(holder), data)
    blob = parse_id(cid)
    partial, gated = await frozen_fetcher(cluster, allowed=3)
    fetching = asyncio.ensure_future(partial.ensure_local(blob))

    async def three_held() -> bool:
        fetch = partial._active.get(blob)
        return fetch is not None and len(fetch.pending.held) == 3

    await wait_for(three_held, 10, "the frozen fetch to hold 3 chunks")
    held = sorted(partial._active[blob].pending.held)
    asker = Contact(node_id_from_name("asker"), "127.0.0.1:1")
    # It offers itself as a provider and serves the root and the chunks it has.
    providers, _closer = partial.handle_find_providers(asker, blob)
    assert partial.contact in providers
    assert partial.handle_fetch_root(asker, blob) == encode_root(partial._active[blob].root)
    for index in held:
        chunk = await partial.handle_fetch_chunk(asker, blob, index)
        assert chunk == data[index * CHUNK : (index + 1) * CHUNK]
    missing = next(i for i in range(10) if i not in held)
    # Over the wire: a held chunk comes back, a missing one is NOT_FOUND.
    channel = grpc.aio.insecure_channel(partial.contact.address)
    cluster.channels.append(channel)
    peer = dht_pb2_grpc.DhtPeerStub(channel)
    sender = dht_pb2.DhtContact(node_id=asker.node_id, address=asker.address)
    reply = await peer.FetchChunk(
        dht_pb2.DhtFetchChunkRequest(sender=sender, key=blob, index=held[0])
    )
    assert reply.data == data[held[0] * CHUNK : (held[0] + 1) * CHUNK]
    with pytest.raises(grpc.aio.AioRpcError) as lacking:
        await peer.FetchChunk(dht_pb2.DhtFetchChunkRequest(sender=sender, key=blob, index=missing))
    assert lacking.value.code() == grpc.StatusCode.NOT_FOUND
    gated.gate.set()
    await asyncio.wait_for(fetching, 10)
    assert partial.store.is_complete(blob)


@pytest.mark.asyncio
async def test_a_third_node_fetches_from_a_partial_holder(cluster: Cluster) -> None:
    holder = await cluster.add()
    data = payload(8 * CHUNK, seed=24)
    cid = await put(cluster.stub(holder), data)
    blob = parse_id(cid)
    partial, gated = await frozen_fetcher(cluster, allowed=4)
    fetching = partial._start_fetch(blob, [holder.contact], first=0)  # in order: 0, 1, ...

    async def four_held() -> bool:
        fetch = partial._active.get(blob)
        return fetch is not None and sorted(fetch.pending.held) == [0, 1, 2, 3]

    await wait_for(four_held, 10, "the frozen fetch to hold chunks 0-3")
    third = await cluster.add()
    # Told only of the partial holder, the third node takes chunks 0-3 from it,
    # hears NOT_FOUND for the rest and finds the full holder by lookup.
    await asyncio.wait_for(third._start_fetch(blob, [partial.contact], first=0), 10)
    assert third.store.is_complete(blob)
    assert partial.metrics.bytes_out._value.get() == 4 * CHUNK
    gated.gate.set()
    await asyncio.wait_for(fetching, 10)
    assert partial.store.is_complete(blob)


@pytest.mark.asyncio
async def test_scrub_finds_a_corrupt_chunk_and_repairs_it_from_a_peer(cluster: Cluster) -> None:
    for _ in range(3):
        await cluster.add()
    for node in cluster.nodes:
        await node.bootstrap()
    data = payload(5 * CHUNK, seed=25)
    cid = await put(cluster.stub(cluster.nodes[0]), data)
    blob = parse_id(cid)

    async def all_hold() -> bool:
        return all(n.store.is_complete(blob) for n in cluster.nodes)

    await wait_for(all_hold, 10, "3 replicas")
    victim, kv = cluster.nodes[2], cluster.kvs[2]
    root = victim.store.root(blob)
    assert root is not None
    kv.data[b"c" + root.chunks[3]] = b"\xff" * CHUNK  # bit rot, nobody reading
    checked, repaired = await victim.scrub_once(bytes_per_s=1e12)
    assert (checked, repaired) == (5, 1)
    assert kv.data[b"c" + root.chunks[3]] == data[3 * CHUNK : 4 * CHUNK]
    assert victim.metrics.scrub_chunks.labels("corrupt")._value.get() == 1
    assert victim.metrics.scrub_chunks.labels("ok")._value.get() == 4
    assert victim.store.is_complete(blob)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lone_node(clock: Clock) -> DhtNode:
    config = DhtConfig(node_id="lone", provider_ttl_ms=30_000, repair_interval_ms=5_000)
    contact = Contact(node_id_from_name("lone"), "127.0.0.1:9")
    return DhtNode(
        config.validate(),
        contact,
        BlobStore(MemoryKeyValue(), 1 << 20),
        GrpcTransport(contact, 1, 1),
        DhtMetrics(CollectorRegistry()),
        random.Random(1),
        clock=clock,
    )


def test_provider_records_expire_unless_announced_again() -> None:
    clock = Clock()
    node = lone_node(clock)
    key = bytes(32)
    a = Contact(node_id_from_name("a"), "127.0.0.1:11")
    b = Contact(node_id_from_name("b"), "127.0.0.1:12")
    node.handle_store(a, key, a)
    clock.now = 20
    node.handle_store(b, key, b)
    assert set(node.live_providers(key)) == {a, b}
    clock.now = 31  # a's record is 31 s old, b's 11 s
    assert node.live_providers(key) == [b]
    assert node.handle_find_providers(b, key)[0] == [b]
    node.handle_store(b, key, b)  # re-announced at 31: lives until 61
    clock.now = 60
    assert node.live_providers(key) == [b]
    clock.now = 61
    assert node.live_providers(key) == []
    assert key not in node.providers


def contact(name: str) -> Contact:
    return Contact(NodeId(node_id_from_name(name)), f"{name}:1")


def test_source_picker_spreads_requests_and_skips_holders_that_lack_a_chunk() -> None:
    picker = SourcePicker(random.Random(3))
    a, b, c = contact("a"), contact("b"), contact("c")
    picker.add([a, b, c])
    first = [picker.pick(i, set()) for i in range(3)]
    assert {x.node_id for x in first if x} == {a.node_id, b.node_id, c.node_id}  # least loaded
    for x in first:
        assert x is not None
        picker.done(x, ok=True)
    picker.pick(7, set())
    picker.lacks(a, 7)
    picker.lacks(b, 7)
    assert picker.pick(7, set()) == c
    assert picker.pick(7, {c.node_id}) is None  # everyone tried or lacking
    picker.add([a])  # rediscovered: a gets a new chance
    assert picker.pick(7, {c.node_id}) == a


@pytest.mark.parametrize("held", [set(), {0}, {0, 7, 8, 12}, set(range(13))])
def test_have_bitmap_round_trips(held: set[int]) -> None:
    bitmap = encode_have(held, 13)
    assert len(bitmap) == 2
    assert decode_have(bitmap, 13) == held
    assert decode_have(bitmap + b"\xff", 13) == held  # bits past the count are ignored


@pytest.mark.asyncio
async def test_have_reports_a_partial_holder_and_busy_caps_uploads(cluster: Cluster) -> None:
    holder = await cluster.add()
    data = payload(6 * CHUNK, seed=26)
    blob = parse_id(await put(cluster.stub(holder), data))
    partial, gated = await frozen_fetcher(cluster, allowed=2)
    fetching = partial._start_fetch(blob, [holder.contact], first=0)

    async def two_held() -> bool:
        fetch = partial._active.get(blob)
        return fetch is not None and len(fetch.pending.held) == 2

    await wait_for(two_held, 10, "the frozen fetch to hold chunks 0-1")
    asker = Contact(node_id_from_name("asker"), "127.0.0.1:1")
    assert partial.handle_have(asker, blob) == (False, encode_have({0, 1}, 6))
    assert holder.handle_have(asker, blob) == (True, b"")
    # Every upload slot taken: the next request is told Busy, not queued.
    holder._uploads = holder.config.max_uploads
    with pytest.raises(Busy):
        await holder.handle_fetch_chunk(asker, blob, 0)
    holder._uploads = 0
    assert await holder.handle_fetch_chunk(asker, blob, 0) == data[:CHUNK]
    gated.gate.set()
    await asyncio.wait_for(fetching, 10)


class BusyCounting(GrpcTransport):
    def __init__(self, contact: Contact) -> None:
        super().__init__(contact, 1.0, 10.0)
        self.busy = 0

    async def fetch_chunk(self, to: Contact, key: bytes, index: int) -> bytes:
        try:
            return await super().fetch_chunk(to, key, index)
        except Busy:
            self.busy += 1
            raise


@pytest.mark.asyncio
async def test_a_chunk_repair_waits_for_a_busy_holder(cluster: Cluster) -> None:
    holder = await cluster.add()
    data = payload(3 * CHUNK, seed=27)
    blob = parse_id(await put(cluster.stub(holder), data))
    counting: list[BusyCounting] = []

    def factory(contact: Contact) -> PeerTransport:
        counting.append(BusyCounting(contact))
        return counting[0]

    victim = await cluster.add(transport_factory=factory)
    await victim.ensure_local(blob)
    root = victim.store.root(blob)
    assert root is not None
    cluster.kvs[1].data[b"c" + root.chunks[1]] = bytes(CHUNK)  # bit rot
    holder._uploads = holder.config.max_uploads  # every upload slot taken
    repair = asyncio.ensure_future(victim._local_chunk(blob, 1))

    async def told_busy() -> bool:
        return counting[0].busy > 0

    await wait_for(told_busy, 10, "the holder to answer Busy")
    assert not repair.done()
    holder._uploads = 0
    assert await asyncio.wait_for(repair, 10) == data[CHUNK : 2 * CHUNK]


def test_a_busy_holder_is_left_alone_by_every_worker_until_the_back_off() -> None:
    picker = SourcePicker(random.Random(5))
    a, b = contact("a"), contact("b")
    picker.add([a, b])
    assert picker.pick(1, {b.node_id}) == a
    picker.busy(a, 1)
    # Another worker, another chunk: a said Busy, so only b is asked.
    assert picker.pick(2, set()) == b
    assert picker.pick(3, {b.node_id}) is None
    assert picker.busy_for(3)  # waiting, not giving up
    picker.clear_busy(1)  # after the back-off
    assert not picker.busy_for(3)
    assert picker.pick(3, {b.node_id}) == a


def test_while_a_holder_is_busy_holders_lacking_the_chunk_are_not_asked() -> None:
    picker = SourcePicker(random.Random(6))
    complete, partial = contact("complete"), contact("partial")
    picker.add([complete, partial])
    picker.learn_have(complete, None)
    picker.learn_have(partial, {0})
    assert picker.pick(4, set()) == complete
    picker.busy(complete, 4)
    assert picker.pick(4, set(), fallback=False) is None
    # As a last resort (nobody is merely busy), its stale have-map is not trusted.
    assert picker.pick(4, set(), fallback=True) == partial


def test_a_refresh_asks_every_new_holder_and_a_few_partial_ones() -> None:
    picker = SourcePicker(random.Random(7))
    partial = [contact(f"p{i}") for i in range(6)]
    complete, new = contact("complete"), contact("new")
    picker.add([*partial, complete])
    for c in partial:
        picker.learn_have(c, {0})
    picker.learn_have(complete, None)
    picker.add([new])
    asked = picker.to_ask(limit=2)
    assert asked[0] == new  # never asked: always
    assert len(asked) == 3 and set(asked[1:]) <= set(partial)  # complete ones: never again
    assert set(picker.to_ask()) == {new, *partial}


def test_a_holder_that_gave_a_retry_after_is_not_asked_before_then() -> None:
    picker = SourcePicker(random.Random(8))
    a, b = contact("a"), contact("b")
    picker.add([a, b])
    assert picker.pick(1, {b.node_id}, now=10.0) == a
    picker.busy(a, 1, retry_after_s=0.5, now=10.0)
    picker.clear_busy(1)  # a worker's back-off ended: the hint still holds
    assert picker.pick(2, {b.node_id}, now=10.2) is None
    assert picker.busy_for(2, now=10.2)
    assert picker.resume_in(now=10.2) == pytest.approx(0.3)
    assert picker.pick(2, {b.node_id}, now=10.5) == a
    assert picker.resume_in(now=10.5) == 0
