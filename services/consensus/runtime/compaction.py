"""Log compaction and the snapshots it makes necessary (Raft §7).

The applied ledger is durable in the node's store, so compacting writes no
snapshot file: every ``compact_every_entries`` applied entries, or once the
log held in memory reaches ``compact_log_bytes``, the log is cut
``compact_keep_entries`` behind the applied index (closer if those would
hold more than half the bytes: a tail for followers that are only a little
behind), and that point is recorded. The cost does not grow with the ledger.

A snapshot file is written only when a follower needs one (a SNAPSHOT
message from the core): from a consistent view of the applied state, off the
event loop, one at a time, then streamed to the peer in chunks by a task of
its own, which reports back to the core exactly once. The log is never
compacted past a file being written or sent. A snapshot received from a
leader is installed (one atomic batch) before anything else of its Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from ..errors import StorageError
from ..metrics import ConsensusMetrics
from ..raft.node import RaftNode
from ..raft.types import Message, SnapshotMeta
from .config import RuntimeConfig
from .ports import NodeStore, Offload, PeerTransport, SnapshotStore

log = logging.getLogger(__name__)


class Compaction:
    def __init__(
        self,
        config: RuntimeConfig,
        core: RaftNode,
        store: NodeStore,
        snapshots: SnapshotStore | None,
        transport: PeerTransport,
        metrics: ConsensusMetrics,
        offload: Offload,
        wake: Callable[[], None],
        start: SnapshotMeta | None,
    ) -> None:
        self._config = config
        self._core = core
        self._store = store
        self.snapshots = snapshots
        self._transport = transport
        self._metrics = metrics
        self._offload = offload
        self._wake = wake
        self._compacted = start.index if start else 0  # where the log starts
        self._log_bytes = core.log_bytes  # payload bytes of the log held in memory
        self._retry_at = 0
        self._writing: asyncio.Task[SnapshotMeta] | None = None
        self._writing_meta: SnapshotMeta | None = None
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._sending_meta: dict[str, SnapshotMeta] = {}
        self._results: list[tuple[str, bool]] = []  # (peer, sent): for the core's snapshot_status

    @staticmethod
    def restore_log_start(
        store: NodeStore, snapshots: SnapshotStore | None, metrics: ConsensusMetrics
    ) -> SnapshotMeta | None:
        """At start: where the log begins, the point of the last compaction or
        installed snapshot. (A data directory written before compaction was
        recorded has only its snapshot files to say so; the newest one the
        applied state covers is taken then.) Files older than that point can
        serve nobody and are deleted, as are files beyond the applied index:
        received but never installed (a crash in between), the leader sends
        again. The log the point covers is deleted (a compaction cut short)."""
        start = store.compacted()
        if snapshots is not None:
            applied = store.applied_index()
            newest = snapshots.latest(max_index=applied)
            if newest is not None and (start is None or newest.index > start.index):
                start = newest
            low = start.index if start else applied + 1
            snapshots.prune(lambda index: low <= index <= applied)
        if start is not None:
            store.compact_log(start)
            metrics.snapshot_index.set(start.index)
        return start

    # ------------------------------------------------------------ the loop's calls

    def appended(self, nbytes: int) -> None:
        self._log_bytes += nbytes

    def take_results(self) -> list[tuple[str, bool]]:
        results, self._results = self._results, []
        return results

    def maybe_compact(self, applied: int) -> None:
        """Compact if due (see the module docstring); a few comparisons in
        the common case, checked once per round of the loop."""
        if self.snapshots is None:
            return
        cfg = self._config
        by_count = applied - cfg.compact_keep_entries - self._compacted >= cfg.compact_every_entries
        by_bytes = self._log_bytes >= cfg.compact_log_bytes
        if not (by_count or by_bytes) or applied < self._retry_at:
            return
        core = self._core
        target = core.compaction_index(cfg.compact_keep_entries, cfg.compact_log_bytes // 2)
        for meta in self._busy():
            target = min(target, meta.index)
        if target <= self._compacted or (not by_bytes and target - self._compacted < cfg.compact_every_entries):
            self._retry_at = applied + 64  # a snapshot being sent holds it back: not every round
            return
        meta = core.compact(target)
        self._store.compact_log(meta)
        self._compacted = meta.index
        self._log_bytes = core.log_bytes
        self._metrics.snapshot_index.set(meta.index)
        busy = {m.index for m in self._busy()}
        self.snapshots.prune(lambda index: index >= meta.index or index in busy)

    def _busy(self) -> list[SnapshotMeta]:
        """Snapshot files being written or streamed to a peer."""
        metas = list(self._sending_meta.values())
        if self._writing is not None and self._writing_meta is not None:
            metas.append(self._writing_meta)
        return metas

    # ------------------------------------------------------------ sending

    def send(self, msg: Message) -> None:
        """Stream a snapshot to the peer a SNAPSHOT message names; the core
        hears back exactly once. Any snapshot at or after the one the core
        names will do (it covers the compacted prefix, and the log holds
        what follows it): the newest stored file if there is one, or else
        one written now, on demand."""
        assert msg.snapshot is not None
        if self.snapshots is None:
            self._results.append((msg.dst, False))
            return
        old = self._sending.get(msg.dst)
        if old is not None and not old.done():
            old.cancel()  # its status is reported by its own finally
        applied = self._core.status().applied_index
        stored = self.snapshots.latest(max_index=applied)
        writing: asyncio.Task[SnapshotMeta] | None
        if stored is not None and stored.index >= msg.snapshot.index:
            meta, writing = stored, None
        else:
            writing = self._take_snapshot(applied)
            assert self._writing_meta is not None
            meta = self._writing_meta
        self._sending_meta[msg.dst] = meta
        self._sending[msg.dst] = asyncio.create_task(
            self._stream(replace(msg, snapshot=meta), writing), name=f"snap-{msg.dst}"
        )

    def _take_snapshot(self, applied: int) -> asyncio.Task[SnapshotMeta]:
        """Write a snapshot file of the applied state as of now (a
        consistent view, read off the loop while the ledger moves on); one
        at a time: while one is being written, that one is returned."""
        if self._writing is not None:
            return self._writing
        meta = self._core.snapshot_meta(applied)
        self._store.sync()  # the applied state the view holds is durable
        view = self._store.state_view()
        self._writing_meta = meta
        task = asyncio.create_task(self._write(meta, view), name="snapshot")
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged and counted there
        self._writing = task
        return task

    async def _write(self, meta: SnapshotMeta, view: object) -> SnapshotMeta:
        assert self.snapshots is not None
        started = time.perf_counter()
        try:
            size: int = await self._offload(self.snapshots.save, meta, self._store.state_records(view))
        except Exception as exc:  # a full disk: the peer's send fails and is retried
            log.error("snapshot at %d failed: %s", meta.index, exc)
            self._metrics.snapshot_failures.labels("save").inc()
            raise
        finally:
            self._writing = None
            self._writing_meta = None
        self._metrics.snapshots.labels("saved").inc()
        self._metrics.snapshot_bytes.set(size)
        self._metrics.snapshot_duration.labels("save").observe(time.perf_counter() - started)
        log.info("snapshot at index %d: %d bytes", meta.index, size)
        return meta

    async def _stream(self, msg: Message, writing: asyncio.Task[SnapshotMeta] | None) -> None:
        assert msg.snapshot is not None and self.snapshots is not None
        meta, ok = msg.snapshot, False
        store, offload, chunk_bytes = self.snapshots, self._offload, self._config.snapshot_chunk_bytes
        started = time.perf_counter()
        try:
            if writing is not None:
                await asyncio.shield(writing)
            if not store.has(meta):
                log.warning("snapshot %d for %s is not stored", meta.index, msg.dst)
                return
            size = store.size_of(meta)

            async def chunks() -> AsyncIterator[Message]:
                offset = 0
                while True:
                    data: bytes = await offload(store.read_chunk, meta, offset, chunk_bytes)
                    done = offset + len(data) >= size
                    yield replace(msg, offset=offset, data=data, done=done)
                    offset += len(data)
                    if done:
                        return

            ok = await self._transport.send_snapshot(msg.dst, chunks())
            if ok:
                self._metrics.snapshots.labels("sent").inc()
                self._metrics.snapshot_duration.labels("send").observe(time.perf_counter() - started)
                log.info("snapshot %d sent to %s (%d bytes)", meta.index, msg.dst, size)
            else:
                self._metrics.snapshot_failures.labels("send").inc()
        except Exception as exc:  # writing it failed (logged there)
            log.warning("snapshot for %s not sent: %s", msg.dst, exc)
        finally:
            self._results.append((msg.dst, ok))
            self._sending_meta.pop(msg.dst, None)
            self._wake()

    # ------------------------------------------------------------ receiving

    async def install(self, meta: SnapshotMeta) -> None:
        """Ready.snapshot: replace the applied state and the log with the
        received snapshot (verified and stored by the receiver), atomically."""
        if self.snapshots is None:
            raise StorageError("a snapshot arrived but this node keeps no snapshots")
        store = self.snapshots
        started = time.perf_counter()
        if self._writing is not None:
            # Our own snapshot reads the state being replaced: let it finish.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._writing)
        await self._offload(store.install_into, meta, self._store.install_snapshot)
        store.prune(lambda index: index == meta.index)
        self._compacted = meta.index
        self._log_bytes = self._core.log_bytes
        self._metrics.snapshots.labels("installed").inc()
        self._metrics.snapshot_bytes.set(store.size_of(meta))
        self._metrics.snapshot_duration.labels("install").observe(time.perf_counter() - started)
        self._metrics.snapshot_index.set(meta.index)
        log.info("installed snapshot at index %d (term %d)", meta.index, meta.term)

    async def stop(self) -> None:
        tasks = [*self._sending.values(), *([self._writing] if self._writing else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
