"""``fleetsuit node``: run one node from its config file (``config.py``)
under the supervisor (``supervisor.py``), one of its services alone (a
Kubernetes container), print an example config, or check a config.

Exit codes: 0 stopped cleanly (or ``--check`` passed), 2 a bad config (the
message names ``[table] key``), 3 the node cannot start (a port taken, its
children still running, a StatefulSet learner that could not join); with
``--service``, the service's own exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shlex
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from fleetsuit import settings
from fleetsuit.cli import EXIT_USAGE, CliError
from fleetsuit.logs import setup_logging
from fleetsuit.rpc import shutdown_event
from fleetsuit.settings import ConfigError, env_name

from .config import (
    KINDS,
    NODE_PREFIX,
    SERVICE_NAMES,
    STATEFULSET_PREFIX,
    NodeConfig,
    NodeSettings,
    StatefulSetSettings,
    derivations,
    load,
    toml_value,
)
from .supervisor import Supervisor, run_service

DESCRIPTION = (
    "Run the four services of one node (consensus, dht, manifest, gateway) as child processes "
    "in the foreground. A child that exits is restarted after a delay that doubles at each exit "
    "in a row ([node] restart_backoff_initial_ms .. restart_backoff_max_ms); SIGTERM or SIGINT "
    "stops the gateway, then consensus (a leader hands leadership over first), then dht and "
    "manifest. HTTP /healthz on [node] health_port answers 200 only when all four serve, and "
    "/metrics counts restarts. DATA/node.json names each child's pid, endpoint and command (not with --service). "
    "The config file is TOML: [node], [statefulset] and one table per service; every key can "
    "be overridden by its environment variable (--example-config lists them all)."
)


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, width=96, initial_indent="# ", subsequent_indent="#   ")


def example_config() -> str:
    """A complete node config: every table and key with its default, its
    help, its environment variable and, for a service, what the node
    derives. [node] and [statefulset] keys are set to their defaults; the
    service keys are commented out (a key set here would override what the
    node derives), so the file resolves to the defaults as it is."""
    out = [
        "# fleetsuit node configuration: `fleetsuit node --config FILE`.",
        "# Precedence, low to high: a service's default < what the node derives from [node]",
        "# < this file < the environment variable named beside each key. An unknown table or",
        "# key, or a bad value, is refused at start naming [table] key. A string is parsed as",
        "# the variable would be; other values must have the key's type.",
        "",
    ]
    for table, cls, prefix in (("node", NodeSettings, NODE_PREFIX),
                               ("statefulset", StatefulSetSettings, STATEFULSET_PREFIX)):
        out.append(f"[{table}]")
        for f in dataclasses.fields(cls):
            out.extend(_wrap(f"{settings._meta(f).help} (env {env_name(prefix, f)})"))
            # Unset, the id of a [statefulset] pod is its name ($HOSTNAME).
            comment = "# " if (table, f.name) == ("node", "id") else ""
            out.append(f"{comment}{f.name} = {toml_value(f.default)}")
        out.append("")
    for name, kind in KINDS.items():
        out.append(f"[{name}]")
        out.extend(_wrap(f"Settings of `python -m {kind.module}` by field name; see its --help."))
        derived = derivations(kind)
        for f in dataclasses.fields(kind.config_cls):
            note = f"; derived: {derived[f.name][0]}" if f.name in derived else ""
            out.extend(_wrap(f"{settings._meta(f).help} (env {env_name(kind.env_prefix, f)}{note})"))
            out.append(f"# {f.name} = {toml_value(f.default)}")
        out.append("")
    return "\n".join(out)


def _load(path: str | None) -> NodeConfig:
    if not path:
        raise CliError("--config FILE is required (or --example-config)", EXIT_USAGE)
    try:
        return load(Path(path))
    except ConfigError as exc:
        raise CliError(f"{path}: {exc}", EXIT_USAGE) from None


def describe(config: NodeConfig, services: Sequence[str]) -> str:
    """What ``--check`` prints: the node, then each service's command."""
    lines = [f"node {config.node.id} of cluster {config.node.cluster_id}: data {config.data_dir}, "
             f"health {config.health_url or 'none'}"]
    for name in services:
        child = config.children[name]
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in child.env.items())
        lines.append(f"{name}: {env + ' ' if env else ''}{shlex.join(child.command)}")
    return "\n".join(lines)


async def _supervise(config: NodeConfig, service: str | None) -> int:
    shutdown = shutdown_event()
    if service is not None:
        return await run_service(config, service, shutdown)
    return await Supervisor(config).run(shutdown)


def cmd_node(args: argparse.Namespace) -> int:
    if args.example_config:
        print(example_config())
        return 0
    config = _load(args.config)
    services = [args.service] if args.service else list(SERVICE_NAMES)
    if args.check:
        print(describe(config, services))
        return 0
    setup_logging("node", config.node.id)
    return asyncio.run(_supervise(config, args.service))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="the node's TOML config file")
    p.add_argument("--service", choices=SERVICE_NAMES, default=None,
                   help="run only this service, not restarted (its exit status is the command's): "
                        "one container of a Kubernetes pod")
    p.add_argument("--example-config", action="store_true",
                   help="print a complete config (every key, its default, help and variable) and exit")
    p.add_argument("--check", action="store_true",
                   help="resolve and validate the config, print each service's command, and exit")
    p.set_defaults(func=cmd_node)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="run the four services of one node, supervised", description=DESCRIPTION)
    add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m launcher.node.cli``: the same as ``fleetsuit node``."""
    parser = argparse.ArgumentParser(prog="fleetsuit node", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_node(args)
    except CliError as exc:
        print(f"fleetsuit: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
