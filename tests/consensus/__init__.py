"""Tests of the Raft consensus core (services/consensus/raft) and its in-memory ports."""
