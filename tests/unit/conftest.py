"""Hypothesis profiles for the fuzz tests: a bounded budget in `make test`, a longer run in `make fuzz`.

FUZZ_PROFILE picks the profile (the Makefile's fuzz target sets it); it is a test knob, not a runtime setting.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# deadline=None: the first example pays for pydantic's and soxr's warm-up, which is no bug.
settings.register_profile("test", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("FUZZ_PROFILE", "test"))
