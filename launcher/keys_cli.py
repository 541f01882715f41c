"""``fleetsuit cluster keys``: the block-signing keys of a cluster's nodes
and its anchors file, made before the nodes first start, for a deployment
that hands each node its key (a Kubernetes Secret mounted at ``/keys``, the
consensus container started with ``--key-file /keys/$(POD_NAME).key``).

``DIR/<node-id>.key`` is a node's Ed25519 key in the format a consensus
process writes for itself (PKCS#8 PEM, mode 0600;
``services/consensus/ledger/certify.py`` NodeKey); ``DIR/anchors.json``
holds the cluster id and the voters' public keys, which ``fleetsuit ledger
verify --anchors`` and devices check certificates against. A key already in
DIR is kept, never overwritten: running the command again with more node
ids (a StatefulSet scaled up) adds their keys and rewrites anchors.json.

The anchors name the voters (``--voters``, default every node id), not
every key made: a block's certificate carries a majority of the voters in
office when it was made, and a verifier needs a majority of the anchors'
keys. So keys for ordinals the StatefulSet may reach later can be made now
without weakening the anchors of the voters of today.

Registered into the ``cluster`` group shared with ``cluster up`` and the
membership commands (``fleetsuit.cli.command_group``). It talks to no
node and starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Any

from fleetsuit.cli import EXIT_USAGE, CliError, add_output_options, command_group, emit
from services.consensus.ledger.certify import Anchors, NodeKey

from .layout import ANCHORS_FILE

CLUSTER_HELP = "the nodes' block-signing keys and anchors.json of a deployment (keys)"
KEY_SUFFIX = ".key"
KEY_MODE = 0o600
# A node id becomes a file name and a Kubernetes Secret key ([-._a-zA-Z0-9]+).
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CLUSTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def node_ids(text: str, flag: str = "--node-ids") -> list[str]:
    """``a,b,c`` -> [a, b, c]; CliError (usage) naming a bad or repeated id."""
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise CliError(f"{flag}: give at least one node id", EXIT_USAGE)
    for node_id in ids:
        if _NODE_ID.fullmatch(node_id) is None or node_id.endswith("."):
            raise CliError(
                f"{flag}: {node_id!r} is not a node id usable as a file name (letters, digits, "
                "'.', '_', '-', starting with a letter or digit, at most 128)", EXIT_USAGE,
            )
    repeated = sorted({n for n in ids if ids.count(n) > 1})
    if repeated:
        raise CliError(f"{flag}: {', '.join(repeated)} given more than once", EXIT_USAGE)
    return ids


def _new_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _create_key(path: Path) -> bool:
    """Write a new key at ``path`` unless one is there; True when created.
    The file is 0600 from its first byte and appears whole (a link of a
    finished temporary file, which fails rather than replace a key)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_new_key_pem())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _load_key(path: Path) -> NodeKey:
    try:
        return NodeKey.load_or_create(path)  # exists: only read
    except (ValueError, TypeError) as exc:
        raise CliError(f"{path}: not a node key (an Ed25519 private key in PEM): {exc}") from None


def _write_anchors(path: Path, anchors: Anchors) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(anchors.to_json() + "\n")
        tmp.chmod(0o644)  # public keys only
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def make_keys(out: Path, ids: list[str], cluster_id: str, voters: list[str] | None = None) -> dict[str, Any]:
    """Create the missing keys of ``ids`` in ``out`` and write its
    anchors.json naming ``voters`` (default: every id); the result
    document. CliError naming what failed."""
    if _CLUSTER_ID.fullmatch(cluster_id) is None:
        raise CliError(f"--cluster-id: {cluster_id!r} is not a cluster id (letters, digits, '.', '_', '-')",
                       EXIT_USAGE)
    voters = list(ids) if voters is None else voters
    strangers = [v for v in voters if v not in ids]
    if strangers:
        raise CliError(f"--voters: {', '.join(strangers)} not among --node-ids", EXIT_USAGE)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is not a directory")
    keys: list[dict[str, Any]] = []
    public: dict[str, bytes] = {}
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        for node_id in ids:
            path = out / f"{node_id}{KEY_SUFFIX}"
            created = False if path.exists() else _create_key(path)
            key = _load_key(path)
            public[node_id] = key.public
            mode = stat.S_IMODE(path.stat().st_mode)
            keys.append({"id": node_id, "file": str(path), "public_key": key.public.hex(),
                         "created": created, "mode": f"{mode:04o}"})
        anchors_path = out / ANCHORS_FILE
        _write_anchors(anchors_path, Anchors(cluster_id=cluster_id, keys={v: public[v] for v in voters}))
    except OSError as exc:
        where = exc.filename or out
        raise CliError(f"cannot write the keys to {where}: {exc.strerror}") from None
    return {"cluster_id": cluster_id, "out": str(out), "anchors": str(anchors_path), "voters": voters,
            "keys": keys}


def _text(doc: dict[str, Any]) -> str:
    lines = []
    for key in doc["keys"]:
        note = "created" if key["created"] else "kept"
        if int(key["mode"], 8) & 0o077:
            note += f"; mode {key['mode']}: readable by others"
        lines.append(f"{key['id']:20} {key['public_key']}  {key['file']} ({note})")
    lines.append(f"anchors of cluster {doc['cluster_id']} (voters {', '.join(doc['voters'])}): {doc['anchors']}")
    return "\n".join(lines)


def cmd_keys(args: argparse.Namespace) -> int:
    voters = node_ids(args.voters, "--voters") if args.voters is not None else None
    doc = make_keys(Path(args.out), node_ids(args.node_ids), args.cluster_id, voters)
    emit(args, doc, _text)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = command_group(sub, "cluster", help=CLUSTER_HELP)
    p = cluster.add_parser(
        "keys",
        help="create the nodes' block-signing keys and the cluster's anchors.json in a directory",
        description=(
            "Create DIR/<node-id>.key for every node id (an Ed25519 block-signing key, PEM, mode "
            "0600) and write DIR/anchors.json (the cluster id and the voters' public keys, which "
            "`fleetsuit ledger verify --anchors` checks certificates against: a majority of them "
            "must sign each block). A key already in DIR is kept, never overwritten: rerun with "
            "more node ids when the cluster grows. Each node "
            "starts with --key-file DIR/<node-id>.key and the same --cluster-id; on Kubernetes, "
            "DIR becomes a Secret (kubectl create secret generic fleetsuit-keys --from-file=DIR) "
            "mounted at /keys."
        ),
    )
    p.add_argument("--node-ids", required=True, metavar="ID,ID,...",
                   help="the nodes' ids (on Kubernetes, the pod names: fleetsuit-0,fleetsuit-1,...)")
    p.add_argument("--cluster-id", required=True, metavar="ID",
                   help="the cluster id the nodes run with (--cluster-id / FLEETSUIT_CLUSTER_ID)")
    p.add_argument("--voters", default=None, metavar="ID,ID,...",
                   help="the nodes anchors.json names: the cluster's voters, a majority of whom signs "
                        "each block (default: every --node-ids; on Kubernetes, the bootstrap pods, "
                        "while --node-ids names every ordinal the StatefulSet may reach)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory of the keys and anchors.json "
                   "(created, mode 0700, when missing)")
    add_output_options(p)
    p.set_defaults(func=cmd_keys)
