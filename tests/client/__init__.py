"""Tests of the release client library (fleetsuit.client) and the release / rollout commands."""
