"""The upload limit: the token bucket with a fake clock, its configuration,
and a real gRPC node that paces what it serves."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fleetsuit.settings import ConfigError
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from services.dht import convert
from services.dht.config import MIB, DhtConfig
from services.dht.content import content_id_of
from services.dht.errors import Busy, ErrorCode, InvalidArgument, NotFound
from services.dht.kv import MemoryKeyValue
from services.dht.metrics import DhtMetrics
from services.dht.ratelimit import TokenBucket
from services.dht.routing import Contact, node_id_from_name
from services.dht.server import DhtDeps, build_server
from services.dht.store import BlobStore
from services.dht.transport import GrpcTransport

# ------------------------------------------------------------ the bucket


def test_a_full_bucket_lets_its_burst_go_at_once() -> None:
    bucket = TokenBucket(rate=100, burst=50, now=0.0)
    assert bucket.reserve(30, now=0.0) == 0
    assert bucket.reserve(20, now=0.0) == 0


def test_beyond_the_burst_a_sender_waits_for_the_missing_tokens() -> None:
    bucket = TokenBucket(rate=100, burst=50, now=0.0)
    assert bucket.reserve(50, now=0.0) == 0
    assert bucket.reserve(25, now=0.0) == pytest.approx(0.25)


def test_later_senders_queue_behind_earlier_reservations() -> None:
    bucket = TokenBucket(rate=100, burst=10, now=0.0)
    waits = [bucket.reserve(10, now=0.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_a_message_larger_than_the_burst_still_goes_later() -> None:
    bucket = TokenBucket(rate=1000, burst=100, now=0.0)
    assert bucket.reserve(1100, now=0.0) == pytest.approx(1.0)


def test_tokens_refill_with_time_but_never_beyond_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=50, now=0.0)
    bucket.reserve(50, now=0.0)
    assert bucket.reserve(20, now=0.2) == 0  # 20 tokens came back
    # An hour idle refills only to the burst.
    assert bucket.reserve(50, now=3600.0) == 0
    assert bucket.reserve(10, now=3600.0) == pytest.approx(0.1)


def test_the_long_run_rate_is_the_configured_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=100, now=0.0)
    now = 0.0
    for _ in range(100):  # a sender that sleeps exactly as told
        now += bucket.reserve(100, now)
    # 10,000 bytes, the first 100 free: 9.9 s at 1,000 bytes/s.
    assert now == pytest.approx(9.9)


def test_a_clock_stepping_back_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=100, burst=50, now=10.0)
    bucket.reserve(50, now=10.0)
    assert bucket.reserve(10, now=5.0) == pytest.approx(0.1)


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-1, 10), (10, 0), (10, -5)])
def test_a_bucket_needs_a_positive_rate_and_burst(rate: float, burst: float) -> None:
    with pytest.raises(InvalidArgument):
        TokenBucket(rate=rate, burst=burst, now=0.0)


def test_a_negative_reservation_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        TokenBucket(rate=10, burst=10, now=0.0).reserve(-1, now=0.0)


# ------------------------------------------------------------ configuration


def test_the_limit_is_off_by_default() -> None:
    assert DhtConfig().validate().upload_bytes_per_s == 0


def test_the_limit_comes_from_the_environment_and_flags_override_it() -> None:
    env = {
        "FLEETSUIT_DHT_UPLOAD_BYTES_PER_S": str(8 * MIB),
        "FLEETSUIT_DHT_UPLOAD_BURST_BYTES": str(2 * MIB),
    }
    config = DhtConfig.from_env(env)
    assert (config.upload_bytes_per_s, config.upload_burst_bytes) == (8 * MIB, 2 * MIB)
    flagged = DhtConfig.from_args(["--upload-bytes-per-s", str(4 * MIB)], env)
    assert (flagged.upload_bytes_per_s, flagged.upload_burst_bytes) == (4 * MIB, 2 * MIB)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"upload_bytes_per_s": -1}, "upload_bytes_per_s"),
        ({"upload_bytes_per_s": MIB, "upload_burst_bytes": 0}, "upload_burst_bytes"),
        # 4 uploads of 1 MiB at 100 KiB/s take 40 s, beyond the 30 s fetch timeout.
        ({"upload_bytes_per_s": 100 * 1024}, "upload_bytes_per_s"),
    ],
)
def test_a_bad_limit_is_refused_naming_the_field(changes: dict[str, int], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DhtConfig().replace(**changes).validate()


# ------------------------------------------------------------ a paced node


@pytest.mark.asyncio
async def test_a_limited_node_serves_a_whole_get_and_waits_for_the_limit() -> None:
    chunk = 64 * 1024
    config = DhtConfig(
        node_id="limited",
        listen="127.0.0.1:0",
        chunk_bytes=chunk,
        upload_bytes_per_s=4 * MIB,
        upload_burst_bytes=chunk,
    ).validate()
    metrics = DhtMetrics(CollectorRegistry())
    deps = DhtDeps(
        store=BlobStore(MemoryKeyValue(), 64 * MIB), metrics=metrics, rng=random.Random(0)
    )
    server, port = build_server(config, deps)
    await server.start()
    assert deps.node is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = dht_pb2_grpc.DhtStub(channel)
            data = random.Random(1).randbytes(8 * chunk)

            async def requests() -> AsyncIterator[dht_pb2.BlobPutRequest]:
                yield dht_pb2.BlobPutRequest(data=data)

            put = await stub.Put(requests())
            got = b"".join(
                [r.data async for r in stub.Get(dht_pb2.BlobGetRequest(content_id=put.content_id))]
            )
        assert content_id_of(got) == put.content_id
        # Only the first chunk fitted in the burst; the other seven waited.
        waited = metrics.registry.get_sample_value("fleetsuit_dht_upload_wait_seconds_total")
        assert waited is not None and waited > 0
    finally:
        await server.stop(None)
        await deps.node.close()


def test_the_backlog_is_the_time_until_every_reservation_has_gone_out() -> None:
    bucket = TokenBucket(rate=100, burst=10, now=0.0)
    assert bucket.backlog_s(now=0.0) == 0
    bucket.reserve(10, now=0.0)
    bucket.reserve(30, now=0.0)
    assert bucket.backlog_s(now=0.0) == pytest.approx(0.3)
    assert bucket.backlog_s(now=0.1) == pytest.approx(0.2)
    assert bucket.backlog_s(now=1.0) == 0


# ------------------------------------------------------------ Busy's retry-after hint


def _busy_rpc_error(trailing: tuple[tuple[str, str], ...]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailing),
        details="4 chunk uploads in progress",
    )


@pytest.mark.parametrize(
    ("hint", "seconds"),
    [(None, 0.0), ("250", 0.25), ("0", 0.0), ("-5", 0.0), ("soon", 0.0), ("999999", 10.0)],
)
def test_a_busy_peer_hint_is_read_bounded(hint: str | None, seconds: float) -> None:
    trailing = [(convert.ERROR_CODE_KEY, ErrorCode.BUSY.value)]
    if hint is not None:
        trailing.append((convert.RETRY_AFTER_KEY, hint))
    error = convert.error_from_rpc(_busy_rpc_error(tuple(trailing)))
    assert isinstance(error, Busy)
    assert error.retry_after_s == pytest.approx(seconds)


def test_a_hint_travels_in_whole_milliseconds_and_only_when_there_is_one() -> None:
    assert Busy("x", 0.0123).trailing_metadata() == ((convert.RETRY_AFTER_KEY, "12"),)
    assert Busy("x").trailing_metadata() == ()
    assert NotFound("x").trailing_metadata() == ()


@pytest.mark.asyncio
async def test_a_full_rate_limited_holder_answers_busy_with_when_to_come_back() -> None:
    chunk = 64 * 1024
    config = DhtConfig(
        node_id="holder",
        listen="127.0.0.1:0",
        chunk_bytes=chunk,
        upload_bytes_per_s=MIB,
        upload_burst_bytes=chunk,
    ).validate()
    deps = DhtDeps(
        store=BlobStore(MemoryKeyValue(), 64 * MIB),
        metrics=DhtMetrics(CollectorRegistry()),
        rng=random.Random(0),
    )
    server, port = build_server(config, deps)
    await server.start()
    node = deps.node
    assert node is not None
    asker = GrpcTransport(Contact(node_id_from_name("asker"), "127.0.0.1:1"), 2.0, 5.0)
    try:
        holder = Contact(node.contact.node_id, f"127.0.0.1:{port}")
        # Every slot taken, with half a second of uploads reserved ahead.
        node._uploads = config.max_uploads
        assert node._upload_limit is not None
        node._upload_limit.reserve(chunk + MIB // 2, now=node.clock())
        with pytest.raises(Busy) as raised:
            await asker.fetch_chunk(holder, bytes(32), 0)
        # The slots drain one by one over the backlog: about 0.5 s / 4.
        assert 0 < raised.value.retry_after_s <= 0.5
    finally:
        await asker.close()
        await server.stop(None)
        await node.close()
