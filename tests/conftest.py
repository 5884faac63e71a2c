"""Hypothesis profiles for the property-based tests (tests/test_fuzz_*.py).

- "ci" (default): a bounded, derandomized run, so CI sees the same cases every time.
- "fuzz": a deliberate long run with fresh random cases:
  PYKERNELS_HYPOTHESIS_PROFILE=fuzz python -m pytest tests/test_fuzz_*.py
  --hypothesis-show-statistics

Pick one with PYKERNELS_HYPOTHESIS_PROFILE or hypothesis' own --hypothesis-profile flag
(the flag wins: the plugin loads it after this file); PYKERNELS_HYPOTHESIS_EXAMPLES=n
overrides the number of examples of the chosen profile. The root /conftest.py (Triton
interpreter setup) runs before this one.
"""

import os

from hypothesis import HealthCheck, Phase, settings

# Tensor cases are drawn from a seed and a few sizes, so hypothesis' "too slow" and
# "large base example" checks would only flag the kernels' own run time.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

# No "explain" phase: it reruns a failing case many times over (minutes through the
# Triton interpreter) to say which draws matter; the drawn case is printed anyway.
_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,
    derandomize=True,
    print_blob=True,
    database=None,
    suppress_health_check=_QUIET,
    phases=_PHASES,
)
settings.register_profile(
    "fuzz",
    max_examples=500,
    deadline=None,
    derandomize=False,
    print_blob=True,
    database=None,
    suppress_health_check=_QUIET,
    phases=_PHASES,
)
settings.load_profile(os.environ.get("PYKERNELS_HYPOTHESIS_PROFILE", "ci"))
if os.environ.get(
    "PYKERNELS_HYPOTHESIS_EXAMPLES"
):  # e.g. fewer examples under the Triton interpreter
    settings.register_profile(
        "custom", settings(max_examples=int(os.environ["PYKERNELS_HYPOTHESIS_EXAMPLES"]))
    )
    settings.load_profile("custom")
