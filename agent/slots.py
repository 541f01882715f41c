"""A device's A/B slots in a directory and its state file.

Layout under the data directory::

    slots/a/<component>     the image in slot a (the name percent-encoded)
    slots/b/<component>
    slots/b/<component>.<digest>.part  a download in progress (resumed from its
                            length; the digest's first 16 hex digits keep
                            another release's bytes out of it)
    state.json              DeviceState, format 1

The state file is written atomically (a temporary file, fsync, rename, fsync
of the directory), so a power cut leaves the old state or the new one,
never half of either. Its format has a version number; a file of another
version is refused rather than guessed at. The simulator's devices that
install nothing keep their state in memory (``MemoryStateStore``).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

from .errors import BadState
from .model import (
    SLOTS,
    ComponentState,
    DeviceState,
    Kind,
    Report,
    ReportEvent,
    SlotContent,
)

FORMAT = 1
MAX_STATE_BYTES = 16 * 1024 * 1024  # bounded before it is parsed


class StateStore(Protocol):
    def load(self) -> DeviceState | None: ...
    def save(self, state: DeviceState) -> None: ...


class MemoryStateStore:
    def __init__(self, state: DeviceState | None = None) -> None:
        self.state = state
        self.saves = 0

    def load(self) -> DeviceState | None:
        return self.state

    def save(self, state: DeviceState) -> None:
        self.state = state
        self.saves += 1


class FileStateStore:
    """``state.json`` in a directory, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"

    def load(self) -> DeviceState | None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(raw) > MAX_STATE_BYTES:
            raise BadState(f"{self.path} is larger than {MAX_STATE_BYTES} bytes")
        try:
            return state_from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise BadState(f"{self.path} does not decode: {exc}") from None

    def save(self, state: DeviceState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(state_to_json(state), sort_keys=True, separators=(",", ":")).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable
        finally:
            os.close(fd)


class SlotFiles:
    """Where each slot's image of a component lives."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "slots"

    def path(self, slot: str, component: str) -> Path:
        if slot not in SLOTS:
            raise ValueError(f"no slot {slot!r}")
        return self.directory / slot / urllib.parse.quote(component, safe="")

    def part_path(self, slot: str, component: str, sha256_hex: str) -> Path:
        path = self.path(slot, component)
        return path.with_name(f"{path.name}.{sha256_hex[:16]}.part")

    def clear_parts(self, slot: str, component: str, keep: Path | None = None) -> None:
        """Remove the partial downloads of other releases into this slot."""
        path = self.path(slot, component)
        if not path.parent.is_dir():
            return
        for part in path.parent.glob(f"{glob_escape(path.name)}.*.part"):
            if part != keep:
                part.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in name)


# ---------------------------------------------------------------- the JSON format


def _content_to_json(content: SlotContent | None) -> dict[str, Any] | None:
    if content is None:
        return None
    return {"release_id": content.release_id, "sequence_number": content.sequence_number,
            "sha256": content.sha256, "size": content.size, "good": content.good}


def _content_from_json(raw: Any) -> SlotContent | None:
    if raw is None:
        return None
    return SlotContent(str(raw["release_id"]), int(raw["sequence_number"]), str(raw["sha256"]),
                       int(raw["size"]), bool(raw["good"]))


def state_to_json(state: DeviceState) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "components": [{
            "component": c.component, "active": c.active, "known_good": c.known_good,
            "a": _content_to_json(c.a), "b": _content_to_json(c.b),
            "highest_sequence": c.highest_sequence, "trial": c.trial, "failed": list(c.failed),
        } for c in state.components],
        "report_counter": state.report_counter,
        "unacked": [{
            "seq": r.seq,
            "events": [{"kind": str(e.kind), "component": e.component, "release_id": e.release_id,
                        "sequence_number": e.sequence_number, "at_unix_ms": e.at_unix_ms,
                        "detail": e.detail} for e in r.events],
        } for r in state.unacked],
    }


def state_from_json(raw: Any) -> DeviceState:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"state format {raw.get('format') if isinstance(raw, dict) else None!r}, "
                         f"this agent reads {FORMAT}")
    components = []
    for c in raw["components"]:
        active, known_good = str(c["active"]), str(c["known_good"])
        if active not in SLOTS or known_good not in SLOTS:
            raise ValueError(f"bad slot name in component {c['component']!r}")
        state = ComponentState(
            str(c["component"]), active, _content_from_json(c["a"]), _content_from_json(c["b"]),
            known_good, int(c["highest_sequence"]), bool(c["trial"]), tuple(str(f) for f in c["failed"]),
        )
        if state.slot(active) is None:
            raise ValueError(f"component {state.component!r}: the active slot is empty")
        components.append(state)
    unacked = tuple(
        Report(int(r["seq"]), tuple(
            ReportEvent(Kind(e["kind"]), str(e["component"]), str(e["release_id"]),
                        int(e["sequence_number"]), int(e["at_unix_ms"]), str(e["detail"]))
            for e in r["events"]
        ))
        for r in raw["unacked"]
    )
    return DeviceState(tuple(components), int(raw["report_counter"]), unacked)
