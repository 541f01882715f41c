"""The Raft core: a pure state machine (no sockets, disk, clock or unseeded
randomness). Messages, ticks and proposals go in; a ``Ready`` comes out with
the hard state and entries to persist, the messages to send and the committed
entries to apply. See ``types.py`` for the contract and ``node.py`` for the
algorithm.
"""
