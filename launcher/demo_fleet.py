"""The fleet step of ``make run``: devices enrolled by an operator update to
the pushed release through the gateways.

The operator enrolls ``count`` simulated devices (seeded Ed25519 keys,
``agent.enrol``) with ``fleetsuit.device_admin``; the fleet simulator runs
them, each a real agent with its own session to a gateway (rendezvous
hashing spreads them over the nodes), verifying the release's envelope
against the CI publisher's key, downloading the payload from its gateway
over HTTP with its digest checked, switching and reporting. The step ends
when every device runs the release and every report is committed, and
reads the ledger's device table back.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

from agent.enrol import fleet_public_pems
from agent.simulator import Simulator, SimulatorConfig
from fleetsuit.client import FleetClient
from fleetsuit.device_admin import DeviceAdmin

SEED = "fleetsuit-demo"
PREFIX = "dev-"


class FleetFailed(Exception):
    """The fleet did not reach the release in time."""


def run_fleet(
    client: FleetClient, gateways: list[str], anchor: Path, *, count: int, component: str,
    device_class: str, release_id: str, timeout_s: float,
) -> None:
    admin = DeviceAdmin(client)
    started = time.monotonic()
    for device_id, pem in fleet_public_pems(count, SEED, PREFIX).items():
        admin.enroll(device_id, device_class, pem)
    print(f"[operator] enrolled {count} devices of class {device_class} in the ledger "
          f"({time.monotonic() - started:.2f}s)")
    config = SimulatorConfig(
        count=count, gateways=tuple(gateways), trust_anchor_paths=(anchor,), seed=SEED, id_prefix=PREFIX,
        device_class=device_class, components=(component,), no_install=True, duration_s=timeout_s,
        until_release=release_id, summary_interval_s=2.0, start_spread_ms=500,
    )
    out = io.StringIO()
    simulator = Simulator(config, out=out)
    started = time.monotonic()
    summary = asyncio.run(simulator.run())
    for line in out.getvalue().splitlines():
        print(f"  [fleet] {line.strip()}")
    if not summary["reached"]:
        raise FleetFailed(f"the fleet did not reach {release_id} in {timeout_s:.0f}s: {summary['versions']}")
    on_gateways: dict[str, int] = {}
    for device in summary["per_device"].values():
        on_gateways[device["gateway_id"]] = on_gateways.get(device["gateway_id"], 0) + 1
    print(f"[fleet] {count} devices run {release_id} ({time.monotonic() - started:.2f}s): each verified the "
          f"envelope against the CI key, downloaded the payload from its gateway and reported; sessions per "
          f"gateway {dict(sorted(on_gateways.items()))}")
    ledger = admin.summary()
    outcome = next((o for o in ledger.outcomes if o.release_id == release_id), None)
    installed = 0 if outcome is None else outcome.installed
    print(f"[ledger] device table: {installed} devices report {release_id} installed; "
          f"by version {dict(ledger.devices_by_version)}")
    if installed != count:
        raise FleetFailed(f"the ledger holds {installed} installs of {release_id}, not {count}")
