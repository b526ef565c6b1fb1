"""Fixtures of the registry tests: a local fake Hugging Face hub (see fakehub.py)."""

from fakehub import fake_hub, tiny_bytes  # noqa: F401
