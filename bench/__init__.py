"""Benchmarks for stability-relay: ``python -m bench`` (``make bench``).

Not part of the relay and not run by ``make test``. Every benchmark runs on this machine only,
over loopback, against an embedded PostgreSQL, with loops bounded in count and time.
"""
