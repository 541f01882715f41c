"""The whole-node simulation: consensus nodes (runtime, ledger machine,
certification, compaction and snapshots) over a fake network, a virtual
clock and in-memory storage, seeded."""
