"""``fleetsuit device run`` (one device agent, until SIGINT/SIGTERM) and
``fleetsuit device simulate`` (a fleet of agents in one process; exit 0, or
1 when ``--until-release`` was not reached within ``--duration``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from fleetsuit.cli import EXIT_CANNOT_START, EXIT_FAILED, EXIT_OK, CliError
from fleetsuit.logs import setup_logging


def register(device_commands: argparse._SubParsersAction[Any]) -> None:
    """Adds ``run`` and ``simulate`` to the ``device`` command group."""
    p = device_commands.add_parser(
        "run", help="run a device agent: register with a gateway, install what it offers",
        description="The reference device agent: keeps a session with a gateway (failing over to its "
                    "backup), verifies every offered envelope against its own trust anchors, downloads "
                    "with resume, installs into the inactive A/B slot, switches at the start time, runs "
                    "the health check and falls back to the known-good slot when it fails.",
    )
    p.add_argument("--id", dest="device_id", required=True, metavar="D", help="the device id")
    p.add_argument("--key", required=True, metavar="PRIV.pem", help="the device's private key")
    p.add_argument("--trust-anchor", action="append", required=True, metavar="PUB.pem",
                   help="a publisher key the device trusts (repeatable)")
    p.add_argument("--gateway", action="append", required=True, metavar="HOST:PORT",
                   help="a gateway to start from (repeatable); the gateways then name the others")
    p.add_argument("--data", required=True, metavar="DIR", help="the slots and the state file")
    p.add_argument("--component", action="append", metavar="NAME",
                   help="a component of the device (repeatable; default firmware)")
    _add_identity(p)
    p.add_argument("--factory-sequence", type=int, default=0, metavar="N",
                   help="the factory image's sequence number (default 0)")
    p.add_argument("--health-check", default="", metavar="COMMAND",
                   help="run after a switch with FLEETSUIT_SLOT_PATH and FLEETSUIT_RELEASE_ID set; "
                        "exit 0 means healthy (default: always healthy)")
    p.add_argument("--health-check-timeout-ms", type=int, default=30_000, metavar="MS")
    p.add_argument("--no-install", action="store_true", help="download and check, write no slot")
    _add_logging(p)
    p.set_defaults(func=cmd_run)

    p = device_commands.add_parser(
        "simulate", help="simulate a fleet of devices in one process",
        description="N device agents in one asyncio process. Device i's key is derived from --seed "
                    "(SHA-256 of SEED/i, Ed25519): --enroll-csv writes the CSV that `fleetsuit device "
                    "enroll --csv` reads. Exit 0, or 1 if --until-release was not reached in --duration.",
    )
    p.add_argument("--count", type=int, required=True, metavar="N", help="how many devices")
    p.add_argument("--gateway", action="append", default=[], metavar="HOST:PORT",
                   help="a gateway to start from (repeatable)")
    p.add_argument("--trust-anchor", action="append", default=[], metavar="PUB.pem",
                   help="a publisher key the devices trust (repeatable)")
    _add_identity(p)
    p.add_argument("--component", action="append", metavar="NAME",
                   help="a component of every device (repeatable; default firmware)")
    p.add_argument("--group", default="", help="the group written to the enrolment CSV")
    p.add_argument("--seed", default="fleetsuit-sim", help="derives the device keys and the faults")
    p.add_argument("--id-prefix", default="sim-", help="device ids are PREFIX00000, PREFIX00001, ...")
    p.add_argument("--enroll-csv", metavar="FILE",
                   help="write the enrolment CSV (and keys/ beside it) for these devices")
    p.add_argument("--enroll-only", action="store_true", help="write --enroll-csv and exit")
    p.add_argument("--no-install", action="store_true",
                   help="download and hash payloads, write nothing (no --data needed)")
    p.add_argument("--data", metavar="DIR", help="each device's slots and state under DIR/<id>")
    p.add_argument("--fail-fraction", type=float, default=0.0, metavar="F",
                   help="this fraction of devices fails its health check (chosen by a stable hash)")
    p.add_argument("--drop-fraction", type=float, default=0.0, metavar="F",
                   help="this fraction of devices drops its session once")
    p.add_argument("--drop-after", type=float, default=10.0, metavar="S", help="seconds before they drop")
    p.add_argument("--come-back-after", type=float, default=10.0, metavar="S",
                   help="seconds they stay away")
    p.add_argument("--clock-skew-ms", type=int, default=0, metavar="MS",
                   help="each device's clock is off by a seeded amount in +-MS")
    p.add_argument("--duration", type=float, default=60.0, metavar="S", help="run at most this long")
    p.add_argument("--until-release", default="", metavar="ID",
                   help="stop once every device runs this release (and its reports are acknowledged)")
    p.add_argument("--summary-interval", type=float, default=5.0, metavar="S",
                   help="print a summary line this often")
    p.add_argument("--start-spread-ms", type=int, default=1_000, metavar="MS",
                   help="spread the devices' first registrations over this long")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write the final summary as JSON")
    _add_logging(p, default_level="WARNING")
    p.set_defaults(func=cmd_simulate)


def _add_identity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="device_class", default="default", metavar="C",
                   help="the device class (default: default)")
    p.add_argument("--vendor-domain", default="fleetsuit.example", metavar="DOMAIN",
                   help="the vendor domain of the SUIT vendor id (default fleetsuit.example)")


def _add_logging(p: argparse.ArgumentParser, default_level: str = "INFO") -> None:
    p.add_argument("--log-level", default=default_level, metavar="LEVEL")
    p.add_argument("--log-format", default="text", choices=("text", "json"))


def _until_signal(main: Any) -> Any:
    """Run ``main(stop)`` with SIGINT and SIGTERM setting ``stop``."""
    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return asyncio.run(runner())


def cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent, AgentConfig
    setup_logging("agent", args.device_id, args.log_level, args.log_format)
    config = AgentConfig(
        device_id=args.device_id, gateways=tuple(args.gateway), key_path=Path(args.key),
        trust_anchor_paths=tuple(Path(p) for p in args.trust_anchor), data_dir=Path(args.data),
        components=tuple(args.component or ("firmware",)), vendor_domain=args.vendor_domain,
        device_class=args.device_class, factory_sequence=args.factory_sequence,
        health_check=args.health_check, health_check_timeout_ms=args.health_check_timeout_ms,
        no_install=args.no_install,
    )

    async def main(stop: asyncio.Event) -> str:
        try:
            agent = Agent(config)
        except (ValueError, OSError) as exc:
            raise CliError(f"cannot start the agent: {exc}", EXIT_CANNOT_START) from None
        return await agent.run(stop)

    code = _until_signal(main)
    if code:
        raise CliError(f"the gateway refused this device: {code}")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from .enrol import write_enrolment
    from .simulator import Simulator, SimulatorConfig, write_summary
    if args.enroll_csv:
        path = write_enrolment(Path(args.enroll_csv), args.count, seed=args.seed, prefix=args.id_prefix,
                               device_class=args.device_class, group=args.group)
        print(f"wrote {path} ({args.count} devices; keys in {path.parent / 'keys'})", file=sys.stderr)
        if args.enroll_only:
            return EXIT_OK
    elif args.enroll_only:
        raise CliError("--enroll-only needs --enroll-csv FILE", 2)
    if not args.gateway or not args.trust_anchor:
        raise CliError("give --gateway HOST:PORT and --trust-anchor PUB.pem", 2)
    setup_logging("simulator", args.id_prefix, args.log_level, args.log_format)
    try:
        config = SimulatorConfig(
            count=args.count, gateways=tuple(args.gateway),
            trust_anchor_paths=tuple(Path(p) for p in args.trust_anchor), seed=args.seed,
            id_prefix=args.id_prefix, device_class=args.device_class, vendor_domain=args.vendor_domain,
            components=tuple(args.component or ("firmware",)), no_install=args.no_install,
            data_dir=Path(args.data) if args.data else None, fail_fraction=args.fail_fraction,
            drop_fraction=args.drop_fraction, drop_after_s=args.drop_after,
            come_back_after_s=args.come_back_after, clock_skew_ms=args.clock_skew_ms,
            duration_s=args.duration, until_release=args.until_release,
            summary_interval_s=args.summary_interval, start_spread_ms=args.start_spread_ms,
        )
        simulator = Simulator(config)
    except (ValueError, OSError) as exc:
        raise CliError(f"cannot start the simulator: {exc}", 2) from None

    summary = _until_signal(simulator.run)
    if args.json_path:
        write_summary(summary, Path(args.json_path))
    else:
        brief = {k: summary[k] for k in ("devices", "reached", "versions", "failovers", "reports")}
        print(json.dumps(brief, sort_keys=True))
    if args.until_release and not summary["reached"]:
        return EXIT_FAILED
    return EXIT_OK
