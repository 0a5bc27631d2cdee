"""Fixtures of the cluster tests: the throwaway PostgreSQL of the store's own tests."""

from tests.broker.accounts.test_store_postgres import postgres

__all__ = ["postgres"]
