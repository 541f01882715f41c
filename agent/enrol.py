"""Simulated devices' identities: Ed25519 keys derived from a seed (the
private key of device i is SHA-256 of ``<seed>/<i>``), so that a test or a
demo can enrol a fleet (``fleetsuit device enroll --csv``) and later run
the same fleet in the simulator without storing a thousand private keys.

For tests and demos only: anyone who knows the seed has every key.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetsuit import device_auth

DEFAULT_SEED = "fleetsuit-sim"
DEFAULT_PREFIX = "sim-"
CSV_HEADER = ("device_id", "device_class", "public_key_file", "group")


def device_id_of(prefix: str, index: int) -> str:
    return f"{prefix}{index:05d}"


def sim_key(seed: str, index: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest())


def fleet_public_pems(count: int, seed: str = DEFAULT_SEED, prefix: str = DEFAULT_PREFIX) -> dict[str, bytes]:
    """device id -> public key PEM, for every simulated device."""
    return {device_id_of(prefix, i): device_auth.public_pem(sim_key(seed, i)) for i in range(count)}


def write_enrolment(
    csv_path: Path, count: int, *, seed: str = DEFAULT_SEED, prefix: str = DEFAULT_PREFIX,
    device_class: str = "default", group: str = "",
) -> Path:
    """The enrolment CSV (``device_id,device_class,public_key_file,group``,
    key files relative to the CSV, in ``keys/`` beside it); returns its path."""
    keys = csv_path.parent / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for device_id, pem in fleet_public_pems(count, seed, prefix).items():
            (keys / f"{device_id}.pub.pem").write_bytes(pem)
            writer.writerow((device_id, device_class, f"keys/{device_id}.pub.pem", group))
    return csv_path
