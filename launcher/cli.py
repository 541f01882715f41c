"""``fleetsuit cluster up``: the launcher's own sub-command, registered in
the ``cluster`` group it shares with the consensus service's membership
commands (``cluster add | remove | transfer-leader``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fleetsuit.cli import command_group

from .up import START_TIMEOUT_S, run_cluster

DEFAULT_BASE_PORT = 7100
CLUSTER_HELP = "a local cluster on loopback (up)"


def cmd_up(args: argparse.Namespace) -> int:
    return run_cluster(args.nodes, Path(args.data), args.base_port, args.cluster_id, args.start_timeout,
                       trust_anchors=args.trust_anchors)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = command_group(sub, "cluster", help=CLUSTER_HELP)
    p = cluster.add_parser(
        "up",
        help="start N nodes on loopback in the foreground (SIGINT/SIGTERM stops every child)",
        description=(
            "Start N nodes on loopback, each a `fleetsuit node` supervisor of its four services "
            "(consensus, dht, manifest, gateway; a child that exits is restarted by its node), wait "
            "until every node's /healthz answers, print the endpoints, and stay in the foreground; "
            "SIGINT or SIGTERM stops every node gracefully. Node i (from 0) uses BASE+10*i: +0 its "
            "/healthz and /metrics, +1 consensus, +2 dht, +3 manifest, +4 gateway, +5 downloads "
            "(HTTP), +6..+9 the services' metrics. DIR/nX/node.toml is a node's config and "
            "DIR/nX/node.json its children; DIR/cluster.json describes every node and child; "
            "DIR/anchors.json holds the cluster id and the nodes' block-signing "
            "keys. Each --trust-anchor is a publisher key the ledger records at its bootstrap "
            "(releases must be signed by one). Refused before anything starts: a trust anchor "
            "that is not a readable P-256 or Ed25519 public key (exit 2), a port taken, DIR in "
            "use by a running cluster, or another cluster id than the one DIR holds."
        ),
    )
    p.add_argument("--nodes", type=int, default=3, metavar="N", help="number of nodes, at least 1 (default: 3)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="data directory: one sub-directory per node, logs, cluster.json and anchors.json")
    p.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT, metavar="PORT",
                   help=f"first port of node n1; node i uses PORT+10*i+0..9 (default: {DEFAULT_BASE_PORT})")
    p.add_argument("--cluster-id", default=None, metavar="ID",
                   help="the cluster id on a first start (default: the one DIR holds, else a new "
                        "fs-<random hex>); a restart keeps the recorded one")
    p.add_argument("--start-timeout", type=float, default=START_TIMEOUT_S, metavar="SECONDS",
                   help=f"how long every service may take to serve (default: {START_TIMEOUT_S:g})")
    p.add_argument("--trust-anchor", dest="trust_anchors", action="append", default=[],
                   metavar="PEM[:components=A,B][:classes=X,Y]",
                   help="a PEM public key (Ed25519 or P-256) allowed to sign releases, optionally only "
                        "for the components and device classes named; repeat for more (default: none: "
                        "no release can be published until the ledger holds anchors)")
    p.set_defaults(func=cmd_up)
