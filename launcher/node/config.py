"""The configuration of one node (``fleetsuit node --config FILE``): one TOML
file with a ``[node]`` table (identity, addresses, supervision), an optional
``[statefulset]`` table (the peers from a Kubernetes StatefulSet pod's
ordinal, ``launcher/statefulset.py``) and one table per service
(``[consensus]``, ``[dht]``, ``[manifest]``, ``[gateway]``) whose keys are
that service's settings by field name (``python -m services.<name> --help``).

Precedence, low to high: a service's default < what the node derives from
``[node]`` (node id, cluster id, data directory, listen and advertised
addresses from ``host``/``listen_host``/``base_port``, the wiring between the
node's services, the peers) < the file's service table < the service's own
environment variable. ``[node]`` and ``[statefulset]`` keys are overridden by
``FLEETSUIT_NODE_<KEY>`` and ``FLEETSUIT_STATEFULSET_<KEY>``. A TOML value
of the key's type is taken as is; a string is parsed as the environment
variable would be. An unknown table or key, or a value that does not parse
or validate, is a :class:`ConfigError` naming ``[table] key`` (and the
variable, when the value came from one).

Each service's settings are checked by that service's own config class,
through the very flags its child process will be given: the command built
here is the command validated. This module reads the file and the
environment; it starts nothing (``supervisor.py`` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import sys
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetsuit import settings
from fleetsuit.settings import ConfigError, env_name, flag_name, setting
from launcher.layout import GATEWAY_HTTP_OFFSET, HIGHEST_OFFSET, NODE_PORT_SPAN, SERVICES
from services.consensus import config as consensus_config
from services.dht import config as dht_config
from services.gateway import config as gateway_config
from services.manifest import config as manifest_config

if TYPE_CHECKING:
    from launcher.statefulset import PodPlan

NODE_PREFIX = "FLEETSUIT_NODE_"
STATEFULSET_PREFIX = "FLEETSUIT_STATEFULSET_"
SERVICE_NAMES = tuple(spec.name for spec in SERVICES)  # start order
TABLES = ("node", "statefulset", *SERVICE_NAMES)
DEFAULT_HOST = "127.0.0.1"
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


@dataclass(frozen=True)
class NodeSettings:
    """The ``[node]`` table (variables ``FLEETSUIT_NODE_<KEY>``)."""

    id: str = setting("n1", "this node's id, unique in the cluster; every service's node_id "
                      "(under [statefulset]: the pod's name; default there: $HOSTNAME)")
    cluster_id: str = setting("fleetsuit", "the cluster's id, given to every service; a data "
                              "directory of another cluster is refused")
    data: str = setting("/var/lib/fleetsuit", "data directory of the node: each service keeps its "
                        "own sub-folder in it, and the supervisor its node.json", metavar="DIR")
    host: str = setting("", "the address other nodes and devices reach this node at (default: "
                        "127.0.0.1, or the pod's own address under [statefulset])")
    base_port: int = setting(7100, "the services listen on base_port + offset: consensus 1, dht 2, "
                             "manifest 3, gateway 4, downloads 5, metrics 6..9; the supervisor's "
                             "/healthz and /metrics on +0")
    listen_host: str = setting("127.0.0.1", "the address the services bind (0.0.0.0 in a container)")
    restart_backoff_initial_ms: int = setting(500, "delay before restarting a child that exited, "
                                              "doubled at each exit in a row (ms)")
    restart_backoff_max_ms: int = setting(30_000, "longest delay before a restart (ms)")
    stable_after_ms: int = setting(60_000, "a child that ran this long restarts after the initial "
                                   "delay again (ms)")
    stop_grace_ms: int = setting(20_000, "how long each child may take to stop after SIGTERM "
                                 "before it is killed (ms); gateway, then consensus, then dht and manifest")
    health_port: int = setting(-1, "port of the supervisor's HTTP /healthz (200 only when all four "
                               "services serve) and /metrics (-1: base_port; 0: none)")
    log_dir: str = setting("", "directory of the children's logs, one SERVICE.log each (default: "
                           "none: they write to the supervisor's stdout and stderr)", metavar="DIR")

    def validate(self) -> None:
        for name in ("id", "cluster_id", "data", "listen_host"):
            if not getattr(self, name):
                raise ConfigError(f"{name} must not be empty")
        highest = 65_535 - HIGHEST_OFFSET
        if not 1 <= self.base_port <= highest:
            raise ConfigError(f"base_port={self.base_port} must be between 1 and {highest}")
        if self.restart_backoff_initial_ms < 1:
            raise ConfigError(f"restart_backoff_initial_ms={self.restart_backoff_initial_ms} must be positive")
        if self.restart_backoff_max_ms < self.restart_backoff_initial_ms:
            raise ConfigError("restart_backoff_max_ms must not be below restart_backoff_initial_ms")
        for name in ("stable_after_ms", "stop_grace_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative")
        if not -1 <= self.health_port <= 65_535:
            raise ConfigError(f"health_port={self.health_port} is out of range (-1..65535)")


@dataclass(frozen=True)
class StatefulSetSettings:
    """The ``[statefulset]`` table (variables ``FLEETSUIT_STATEFULSET_<KEY>``)."""

    enabled: bool = setting(False, "derive the peers from this pod's StatefulSet ordinal (the "
                            "node id, a pod name, ends in -N)")
    service: str = setting("fleetsuit", "the headless Service that gives each pod its DNS name")
    bootstrap_replicas: int = setting(3, "pods 0..N-1 bootstrap the cluster as its voters; a higher "
                                      "ordinal starts as a learner and asks to be added")
    address_template: str = setting(
        "{pod}.{service}:{port}", "a pod's address: {pod} {service} {ordinal} {port}, or "
        "{ordinal_port} (port + 10*ordinal: pods on one host; this node's ports then shift too)")

    def validate(self) -> None:
        if not self.service:
            raise ConfigError("service must not be empty")
        if self.bootstrap_replicas < 1:
            raise ConfigError(f"bootstrap_replicas={self.bootstrap_replicas} must be at least 1")
        if "{port}" not in self.address_template and "{ordinal_port}" not in self.address_template:
            raise ConfigError("address_template must contain {port} or {ordinal_port}")


@dataclass(frozen=True)
class ServiceKind:
    """One of the node's four services: its module, its config class and ports."""

    name: str
    module: str
    config_cls: type[Any]
    env_prefix: str
    port_offset: int
    metrics_offset: int


_CLASSES: dict[str, tuple[type[Any], str]] = {
    "consensus": (consensus_config.ConsensusConfig, consensus_config.ENV_PREFIX),
    "dht": (dht_config.DhtConfig, dht_config.ENV_PREFIX),
    "manifest": (manifest_config.ManifestConfig, manifest_config.ENV_PREFIX),
    "gateway": (gateway_config.GatewayConfig, gateway_config.ENV_PREFIX),
}
KINDS: dict[str, ServiceKind] = {
    spec.name: ServiceKind(spec.name, spec.module, *_CLASSES[spec.name], spec.port_offset, spec.metrics_offset)
    for spec in SERVICES
}


@dataclass(frozen=True)
class ChildSpec:
    """One service of the node, resolved: its exact command and addresses."""

    service: str
    command: tuple[str, ...]
    env: Mapping[str, str]  # settings that have no flag, for the child's environment
    endpoint: str  # where other nodes, clients and devices reach it
    probe: str  # where this node's supervisor asks its health
    metrics: str  # HOST:PORT of its /metrics ("" when off)
    settings: Any  # its validated config object


@dataclass(frozen=True)
class NodeConfig:
    """A node config file resolved against the environment."""

    node: NodeSettings
    statefulset: StatefulSetSettings
    children: Mapping[str, ChildSpec]  # in start order
    host: str  # advertised
    base_port: int  # the node's own (under [statefulset] with {ordinal_port}: shifted)
    plan: PodPlan | None = None
    path: Path | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data).absolute()

    @property
    def log_dir(self) -> Path | None:
        return Path(self.node.log_dir).absolute() if self.node.log_dir else None

    @property
    def health_port(self) -> int | None:
        """The supervisor's HTTP port, None when turned off."""
        if self.node.health_port == 0:
            return None
        return self.base_port if self.node.health_port < 0 else self.node.health_port

    @property
    def health_url(self) -> str | None:
        port = self.health_port
        return None if port is None else f"http://{self.host}:{port}/healthz"

    @property
    def downloads(self) -> str:
        """Where devices download payloads (the gateway's HTTP)."""
        gateway = self.children["gateway"].settings
        return str(gateway.advertise_http or gateway.http_listen)


# ------------------------------------------------------------ derivation


@dataclass(frozen=True)
class _Ctx:
    node: NodeSettings
    host: str
    base: int
    plan: PodPlan | None

    def at(self, offset: int) -> str:
        return f"{self.host}:{self.base + offset}"

    def bind(self, offset: int) -> str:
        return f"{self.node.listen_host}:{self.base + offset}"


Derive = Callable[[_Ctx], str | None]


def _consensus_peers(ctx: _Ctx) -> str:
    if ctx.plan is None:
        return f"{ctx.node.id}={ctx.at(1)}"
    # The bootstrap members and this pod (a learner names its own address too).
    peers = ctx.plan.consensus_peers
    return ",".join(f"{nid}={address}" for nid, address in sorted(peers.items()))


def _address_at(offset: int) -> Derive:
    def derive(c: _Ctx) -> str:
        return c.at(offset)

    return derive


def derivations(kind: ServiceKind) -> dict[str, tuple[str, Derive]]:
    """Field -> (where it comes from, for the docs; its value or None)."""
    p, m = kind.port_offset, kind.metrics_offset
    def listen(c: _Ctx) -> str:
        return c.bind(p)

    def advertise(c: _Ctx) -> str:
        return c.at(p)

    def metrics_port(c: _Ctx) -> str:
        return str(c.base + m)

    out: dict[str, tuple[str, Derive]] = {
        "node_id": ("[node] id", lambda c: c.node.id),
        "cluster_id": ("[node] cluster_id", lambda c: c.node.cluster_id),
        "data_dir": ("[node] data", lambda c: str(Path(c.node.data).absolute())),
        "listen": (f"[node] listen_host:base_port+{p}", listen),
        "metrics_host": ("[node] listen_host", lambda c: c.node.listen_host),
        "metrics_port": (f"[node] base_port+{m}", metrics_port),
        "advertise": (f"[node] host:base_port+{p}", advertise),
    }
    if kind.name == "consensus":
        out["peers"] = ("this node alone at [node] host:base_port+1, or [statefulset]'s bootstrap pods",
                        _consensus_peers)
        out["join"] = ("true for a [statefulset] ordinal >= bootstrap_replicas",
                       lambda c: "true" if c.plan is not None and c.plan.join else None)
        for other in ("dht", "manifest", "gateway"):
            offset = KINDS[other].port_offset
            out[f"{other}_endpoint"] = (f"[node] host:base_port+{offset}", _address_at(offset))
    elif kind.name == "dht":
        out["seeds"] = ("[statefulset]'s other pods",
                        lambda c: ",".join(c.plan.dht_seeds) if c.plan is not None else None)
    elif kind.name == "gateway":
        http = GATEWAY_HTTP_OFFSET
        out["http_listen"] = (f"[node] listen_host:base_port+{http}", lambda c: c.bind(http))
        out["advertise_http"] = (f"[node] host:base_port+{http}", lambda c: c.at(http))
        out["consensus_endpoint"] = ("[node] host:base_port+1", lambda c: c.at(1))
        out["dht_endpoint"] = ("[node] host:base_port+2", lambda c: c.at(2))
    names = {f.name for f in dataclasses.fields(kind.config_cls)}
    return {name: d for name, d in out.items() if name in names}


def identity_variables() -> set[str]:
    """The environment variables that set what differs between the nodes
    of one host (``[node]``, ``[statefulset]``, and every service setting
    the node derives): ``cluster up`` keeps them from its supervisors."""
    out = {env_name(NODE_PREFIX, f) for f in dataclasses.fields(NodeSettings)}
    out |= {env_name(STATEFULSET_PREFIX, f) for f in dataclasses.fields(StatefulSetSettings)}
    for kind in KINDS.values():
        derived = derivations(kind)
        out |= {env_name(kind.env_prefix, f) for f in dataclasses.fields(kind.config_cls) if f.name in derived}
    return out


# ------------------------------------------------------------ resolution


@dataclass(frozen=True)
class _Value:
    raw: str | tuple[str, ...]  # a tuple: one flag per item (a repeatable setting)
    source: str  # "env", "file" or "derived"
    where: str  # the variable, or what it is derived from


@dataclass(frozen=True)
class _Table:
    settings: Any
    values: Mapping[str, _Value]
    argv: tuple[str, ...]
    env: Mapping[str, str]


def _hints(cls: type[Any]) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _kind_of(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, type(int | None)) and len(args) == 1:
        hint = args[0]
    if hint in (bool, int, float, str):
        return str(hint.__name__)
    return "list"


_EXPECTED = {"bool": "a boolean", "int": "an integer", "float": "a number", "str": "a string",
             "list": "a string or a list of strings"}


def _toml_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return names.get(type(value), type(value).__name__)


def _from_toml(table: str, key: str, value: Any, field: dataclasses.Field[Any], hint: Any) -> str | tuple[str, ...]:
    """A TOML value as the raw text(s) of the key's flag; typed values must
    match the setting's type, strings are parsed like the variable."""
    kind = _kind_of(hint)
    separator = settings.repeat_separator(field)
    if isinstance(value, str):
        return tuple(p for p in value.split(separator) if p.strip()) if separator else value
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
    }.get(kind, False)
    if ok:
        return ("true" if value else "false") if kind == "bool" else str(value)
    if kind == "list" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value) if separator else ",".join(value)
    if kind == "list" and isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return ",".join(f"{k}={v}" for k, v in value.items())  # peers = {n1 = "host:port"}
    raise ConfigError(f"[{table}] {key} = {toml_value(value)}: expected {_EXPECTED[kind]}, got a TOML {_toml_type(value)}")


def _as_bool(table: str, key: str, value: _Value) -> bool:
    try:
        return settings.parse_bool(str(value.raw))
    except ValueError:
        raise ConfigError(f"{_named(table, key, value)} = {value.raw!r}: not a boolean (true/false)") from None


def _named(table: str, key: str, value: _Value) -> str:
    """``[table] key``, with the variable when the value came from one."""
    return f"{value.where} ([{table}] {key})" if value.source == "env" else f"[{table}] {key}"


def _explain(table: str, cls: type[Any], message: str, values: Mapping[str, _Value]) -> str:
    """A service's own error message, told in the terms of the node file."""
    fields = _hints(cls)
    for key, value in values.items():
        f = fields[key][0]
        raw = (settings.repeat_separator(f) or ",").join(value.raw) if isinstance(value.raw, tuple) else value.raw
        for name in (flag_name(f), value.where):
            prefix = f"{name}={raw!r}: "
            if message.startswith(prefix):
                origin = {"file": "", "env": "", "derived": f" (derived from {value.where})"}[value.source]
                return f"{_named(table, key, value)} = {raw!r}{origin}: {message[len(prefix):]}"
    if message.startswith("unknown setting "):
        variable = message.split()[2]
        return f"{variable}: unknown environment variable ([{table}] has no such key)"
    mentioned = sorted((message.find(k), k) for k in fields if _mentions(message, k))
    note = ""
    if mentioned:
        found = values.get(mentioned[0][1])
        if found is not None:
            note = {"env": f" (from {found.where})", "file": " (from the config file)",
                    "derived": f" (derived from {found.where})"}[found.source]
    return f"[{table}] {message}{note}"


def _mentions(message: str, key: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(key)}(?!\w)", message) is not None


def _resolve_table(
    table: str, cls: type[Any], prefix: str, given: Mapping[str, Any], derived: Mapping[str, tuple[str, str]],
    environ: Mapping[str, str],
) -> _Table:
    """One table: its values by precedence, the flags that carry them, and
    the config object its class builds from those flags (validated)."""
    fields = _hints(cls)
    for key in given:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"[{table}] {key}: unknown key{hint}; `fleetsuit node --example-config` lists them")
    values: dict[str, _Value] = {}
    for key, (f, hint) in fields.items():
        variable = env_name(prefix, f)
        if environ.get(variable, ""):
            separator = settings.repeat_separator(f)
            raw = environ[variable]
            values[key] = _Value(tuple(p for p in raw.split(separator) if p.strip()) if separator else raw,
                                 "env", variable)
        elif key in given:
            values[key] = _Value(_from_toml(table, key, given[key], f, hint), "file", variable)
        elif key in derived:
            values[key] = _Value(derived[key][1], "derived", derived[key][0])
    argv: list[str] = []
    child_env: dict[str, str] = {}
    for key, value in values.items():
        f, hint = fields[key]
        flag = flag_name(f)
        if not settings.has_flag(f):
            child_env[env_name(prefix, f)] = value.raw if isinstance(value.raw, str) else ";".join(value.raw)
        elif _kind_of(hint) == "bool":
            argv.append(flag if _as_bool(table, key, value) else "--no-" + flag[2:])
        elif isinstance(value.raw, tuple):
            argv.extend(f"{flag}={item}" for item in value.raw)
        else:
            argv.append(f"{flag}={value.raw}")
    parser = argparse.ArgumentParser(prog=f"[{table}]", add_help=False, exit_on_error=False)
    settings.add_arguments(parser, cls, prefix)
    try:
        namespace = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:  # not expected: the flags are the class's own
        raise ConfigError(f"[{table}] {exc}") from None
    try:
        config = settings.from_sources(cls, namespace, {**environ, **child_env}, prefix)
    except ConfigError as exc:
        raise ConfigError(_explain(table, cls, str(exc), values)) from None
    return _Table(config, values, tuple(argv), child_env)


def _tables(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {name: {} for name in TABLES}
    for name, value in doc.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: a key outside any table; settings live in [{'], ['.join(TABLES)}]")
        if name not in TABLES:
            close = difflib.get_close_matches(name, TABLES, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise ConfigError(f"[{name}]: unknown table{hint}; the tables are "
                              + ", ".join(f"[{t}]" for t in TABLES))
        for key, item in value.items():
            if isinstance(item, dict) and not (name == "consensus" and key == "peers"):
                raise ConfigError(f"[{name}.{key}]: unknown table; [{name}] holds keys only")
        out[name] = dict(value)
    return out


def _pod_plan(node: NodeSettings, explicit_id: bool, sts: StatefulSetSettings,
              environ: Mapping[str, str]) -> PodPlan:
    from launcher.statefulset import StatefulSetSpec, pod_plan

    pod = node.id if explicit_id else environ.get("HOSTNAME", "") or node.id
    spec = StatefulSetSpec(service=sts.service, bootstrap_replicas=sts.bootstrap_replicas,
                           address_template=sts.address_template)
    ports = {name: node.base_port + kind.port_offset for name, kind in KINDS.items()}
    try:
        return pod_plan(pod, spec, ports)
    except ValueError as exc:
        raise ConfigError(f"[statefulset] pod {pod!r}: {exc}") from None


def parse(text: str, env: Mapping[str, str] | None = None, *, path: Path | None = None) -> NodeConfig:
    """Resolve a node config's text against ``env`` (``os.environ`` when None)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path or 'node config'} is not valid TOML: {exc}") from None
    return resolve(_tables(doc), env, path=path)


def load(path: Path, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read and resolve a node config file; ConfigError naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    return parse(text, env, path=path)


def resolve(tables: Mapping[str, Mapping[str, Any]], env: Mapping[str, str] | None = None, *,
            path: Path | None = None) -> NodeConfig:
    """Every table resolved and validated, the four commands built."""
    environ = os.environ if env is None else env
    node_table = _resolve_table("node", NodeSettings, NODE_PREFIX, tables.get("node", {}), {}, environ)
    node: NodeSettings = node_table.settings
    sts: StatefulSetSettings = _resolve_table(
        "statefulset", StatefulSetSettings, STATEFULSET_PREFIX, tables.get("statefulset", {}), {}, environ,
    ).settings
    plan: PodPlan | None = None
    host, base = node.host or DEFAULT_HOST, node.base_port
    if sts.enabled:
        plan = _pod_plan(node, "id" in node_table.values, sts, environ)
        node = dataclasses.replace(node, id=plan.pod)
        host = node.host or plan.advertise
        if "{ordinal_port}" in sts.address_template:
            base = node.base_port + NODE_PORT_SPAN * plan.ordinal
            if base + HIGHEST_OFFSET > 65_535:
                raise ConfigError(f"[node] base_port={node.base_port}: pod ordinal {plan.ordinal} "
                                  "shifts its ports past 65535")
    ctx = _Ctx(node, host, base, plan)
    children: dict[str, ChildSpec] = {}
    for name, kind in KINDS.items():
        derived = {}
        for key, (where, derive) in derivations(kind).items():
            value = derive(ctx)
            if value is not None:
                derived[key] = (where, value)
        table = _resolve_table(name, kind.config_cls, kind.env_prefix, tables.get(name, {}), derived, environ)
        children[name] = _child(kind, table, ctx)
    return NodeConfig(node, sts, children, host, base, plan, path)


def _child(kind: ServiceKind, table: _Table, ctx: _Ctx) -> ChildSpec:
    config = table.settings
    listen_host, _, port = str(config.listen).rpartition(":")
    advertise = str(getattr(config, "advertise", "") or "")
    if kind.name == "consensus":
        advertise = config.peer_addresses.get(config.node_id, "")
    endpoint = advertise or f"{ctx.host}:{port}"
    probe_host = "127.0.0.1" if listen_host in WILDCARD_HOSTS else listen_host
    metrics_port = int(config.metrics_port)
    metrics = f"{ctx.host}:{metrics_port}" if metrics_port > 0 else ""
    command = (sys.executable, "-m", kind.module, *table.argv)
    return ChildSpec(kind.name, command, dict(table.env), endpoint, f"{probe_host}:{port}", metrics, config)


# ------------------------------------------------------------ writing TOML


def toml_value(value: Any) -> str:
    """A Python value as TOML (strings, numbers, booleans, lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def render(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """A node config file's text from tables of plain values."""
    out = []
    for name, table in tables.items():
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}")
        out.append(f"[{name}]")
        out.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
        out.append("")
    return "\n".join(out)


def keys_from_flags(service: str, args: Sequence[str]) -> dict[str, Any]:
    """A service's command-line flags (``["--heartbeat-interval-ms",
    "1000"]``) as keys of its table; ValueError on a flag it does not have."""
    kind = KINDS[service]
    fields = _hints(kind.config_cls)
    flags = {flag_name(f): (key, hint, settings.repeat_separator(f)) for key, (f, hint) in fields.items()}
    out: dict[str, Any] = {}
    items = list(args)
    while items:
        token = items.pop(0)
        flag, has_value, text = token.partition("=")
        negated = flag.startswith("--no-") and "--" + flag[5:] in flags
        if flag not in flags and not negated:
            raise ValueError(f"{service} has no flag {flag}")
        key, hint, repeat = flags["--" + flag[5:]] if negated else flags[flag]
        if _kind_of(hint) == "bool" and not has_value:
            out[key] = not negated
            continue
        if not has_value:
            if not items:
                raise ValueError(f"{flag} needs a value")
            text = items.pop(0)
        out[key] = [*out.get(key, []), text] if repeat else text
    return out
