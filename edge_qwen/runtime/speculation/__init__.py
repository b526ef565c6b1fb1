"""Speculative decoding as pure logic: the drafters' configuration and prompt lookup, the
verification rule, and the measured step cost that decides how long drafts are (the draft model's
context lives in the engine: :mod:`~edge_qwen.runtime.engine.draft`)."""
