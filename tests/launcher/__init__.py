"""Tests of the launcher above the services: the local cluster, its checks, the layering."""
