"""Tests of the ``fleetsuit`` command line: one shape for every command."""
