"""The RemoteLLM benchmark harness: `uv run python -m bench --quick` (see bench/README.md)."""
