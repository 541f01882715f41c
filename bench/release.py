"""Benchmark of the release path on a 3-node cluster of real processes
(loopback, RocksDB), with ``fleetsuit.client.FleetClient`` as a CI job uses
it, each figure beside its anchor measured in the same run:

- **push**: a 20 MiB release pushed end to end (upload to the node's dht,
  envelope built and signed, the node's checks, commit), in MB/s, against
  a plain dht Put of another 20 MiB payload to the same node (what the
  upload alone costs: the release path's own share is the rest) and raw
  loopback TCP (``bench.dht.raw_tcp``: a 256 MiB transfer between two
  Python processes, the link's limit);
- **publish**: a release whose payload is already stored (the check before
  proposal: a read barrier, the apply-time check, the manifest service's
  Validate, the dht's Stat with a network lookup; then the commit), in ms,
  against a plain ledger entry submitted the same way on the same node
  (``Ledger.Submit`` of a 64-byte app entry): what the checks add to a
  commit;
- **reads**: ``Releases.ListReleases`` linearizable (ReadIndex) and stale,
  in ms.

Figures are medians. ``main(results_dir)`` returns them and writes
``results_dir/release.json``; run standalone with ``python -m bench.release``.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from fleetsuit.client import FleetClient
from fleetsuit.v1 import consensus_pb2 as pb
from fleetsuit.v1 import consensus_pb2_grpc as pb_grpc
from fleetsuit.v1 import dht_pb2, dht_pb2_grpc
from launcher.cluster import start_cluster, stop_processes
from suit.keys import KeyAlgorithm, generate, private_pem, public_pem
from tests.support.ports import free_base_port
from tests.support.wait import wait_until

from .dht import raw_tcp

MIB = 1024 * 1024
PUSH_BYTES = 20 * MIB
PUSHES = 5
PUBLISHES = 30
READS = 200
SMALL_PAYLOAD = 64 * 1024


def _ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 2)


def run(root: Path) -> dict[str, Any]:
    key = generate(KeyAlgorithm.ED25519)
    anchor = root / "ci.pub.pem"
    anchor.write_bytes(public_pem(key.public_key()))
    key_pem = private_pem(key)
    base = free_base_port(40)
    doc, procs = start_cluster(3, root / "cluster", base, "bench-release", trust_anchors=[anchor])
    try:
        endpoint = doc["nodes"][0]["endpoints"]["consensus"]
        channel = grpc.insecure_channel(endpoint)
        ledger, releases = pb_grpc.LedgerStub(channel), pb_grpc.ReleasesStub(channel)
        wait_until(lambda: ledger.Status(pb.StatusRequest(), timeout=1).leader_id, 60, "a leader")
        wait_until(lambda: releases.TrustAnchors(pb.TrustAnchorsRequest(), timeout=2).anchors, 60, "the anchors")
        rng = random.Random(7)
        with FleetClient(endpoint, retry_deadline_s=60) as client:
            push_s: list[float] = []
            for i in range(PUSHES):
                payload = rng.randbytes(PUSH_BYTES)
                started = time.perf_counter()
                client.push_release(payload, component="firmware", sequence=i + 1, key_pem=key_pem)
                push_s.append(time.perf_counter() - started)
            tcp = [raw_tcp().mb_s for _ in range(3)]

            dht = dht_pb2_grpc.DhtStub(grpc.insecure_channel(doc["nodes"][0]["endpoints"]["dht"]))
            put_s: list[float] = []
            for _ in range(PUSHES):
                payload = rng.randbytes(PUSH_BYTES)
                pieces = [dht_pb2.BlobPutRequest(data=payload[o:o + MIB]) for o in range(0, PUSH_BYTES, MIB)]
                started = time.perf_counter()
                dht.Put(iter(pieces), timeout=60)
                put_s.append(time.perf_counter() - started)
            publish_s: list[float] = []
            submit_s: list[float] = []
            for i in range(PUBLISHES):
                payload = rng.randbytes(SMALL_PAYLOAD)
                put = dht.Put(iter([dht_pb2.BlobPutRequest(data=payload, pin=True)]), timeout=30)
                started = time.perf_counter()
                client.push_release(None, component="app", sequence=i + 1, key_pem=key_pem,
                                    payload_cid=put.content_id, payload_size=put.size)
                publish_s.append(time.perf_counter() - started)
                entry = pb.LedgerEntry(client_id="bench-plain", request_id=i + 1, app=pb.AppEntry(payload=b"p" * 64))
                started = time.perf_counter()
                ledger.Submit(pb.SubmitRequest(entry=entry), timeout=10)
                submit_s.append(time.perf_counter() - started)

        linear_s, stale_s = [], []
        for _ in range(READS):
            started = time.perf_counter()
            releases.ListReleases(pb.ListReleasesRequest(), timeout=5)
            linear_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            releases.ListReleases(pb.ListReleasesRequest(stale_ok=True), timeout=5)
            stale_s.append(time.perf_counter() - started)
        channel.close()
    finally:
        stop_processes(procs)
    push_mb_s = PUSH_BYTES / MIB / statistics.median(push_s)
    tcp_mb_s = statistics.median(tcp)
    return {
        "push_20mib_s": round(statistics.median(push_s), 3),
        "push_mb_s": round(push_mb_s, 1),
        "dht_put_20mib_s": round(statistics.median(put_s), 3),
        "push_vs_dht_put": round(statistics.median(put_s) / statistics.median(push_s), 3),
        "raw_tcp_mb_s": round(tcp_mb_s, 1),
        "push_vs_tcp": round(push_mb_s / tcp_mb_s, 3),
        "publish_ms": _ms(publish_s),
        "plain_submit_ms": _ms(submit_s),
        "publish_vs_plain_submit": round(statistics.median(publish_s) / statistics.median(submit_s), 2),
        "list_releases_linearizable_ms": _ms(linear_s),
        "list_releases_stale_ms": _ms(stale_s),
        "releases_listed": PUSHES + PUBLISHES,
        "runs": {"pushes": PUSHES, "publishes": PUBLISHES, "reads": READS},
    }


def main(results_dir: Path) -> dict[str, Any]:
    results_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetsuit-bench-release-") as tmp:
        result = run(Path(tmp))
    print(f"push of a 20 MiB release: {result['push_20mib_s']} s ({result['push_mb_s']} MB/s); a plain dht "
          f"Put of 20 MiB {result['dht_put_20mib_s']} s (ratio {result['push_vs_dht_put']}); raw loopback TCP "
          f"{result['raw_tcp_mb_s']} MB/s (ratio {result['push_vs_tcp']})")
    print(f"publish (payload stored; checks + commit): {result['publish_ms']} ms; a plain entry's commit "
          f"{result['plain_submit_ms']} ms; ratio {result['publish_vs_plain_submit']}")
    print(f"ListReleases of {result['releases_listed']} releases: linearizable "
          f"{result['list_releases_linearizable_ms']} ms, stale {result['list_releases_stale_ms']} ms")
    (results_dir / "release.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/results"))
