"""Hypothesis profiles for the in-process decision tests: `fast` (the
default: a few dozen examples each, the whole folder in about a second) and
`thorough` (PHOENIX_HYPOTHESIS=thorough: thousands, for a change to a rule)."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("fast", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("PHOENIX_HYPOTHESIS", "fast"))
