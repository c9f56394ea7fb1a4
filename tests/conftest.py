"""Settings for the whole test suite, loaded before any test module.

Hypothesis: the `distlab` profile turns off the per-example deadline and the
too-slow health check, the two checks that measure time, so a loaded CI
machine cannot fail a property test on timing (DESIGN.md: timing never
decides a test; speed is `make bench`'s). HYPOTHESIS_PROFILE picks another
registered profile, e.g. Hypothesis's own `default` to hunt slow examples.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("distlab", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "distlab"))
