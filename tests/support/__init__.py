"""Helpers every multi-process test and benchmark shares, written once: free
loopback ports (``ports``), waiting on a condition with a deadline
(``wait``), stopping processes by pid (``procs``) and a local cluster
started and stopped by a test (``cluster``).

Nothing here sleeps to wait for something: it polls a condition until a
deadline and fails naming what it waited for."""
