"""Deterministic whole-cluster simulation of the Raft core: a seeded fake
network (network.py), a harness that plays each node's runtime (cluster.py),
the safety invariants (invariants.py) and one seeded run (scenario.py).
"""
