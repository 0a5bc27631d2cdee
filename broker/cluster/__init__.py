"""Cluster mode: several brokers sharing connectors, limits and portal state through Redis.

Turned on by `--redis-url`; without it none of this package is imported and the broker is
one process with its embedded store. See docs/cluster.md.
"""
