"""The ledger: committed Raft entries applied into a hash-chained sequence of
blocks that anyone can verify offline."""
