"""Accounts: users, API keys and connector tokens in the store, the callers they resolve to, their
limits, the usage ledger and the admin commands."""
