"""tests/conftest.py: every property test runs without a timing check."""

from hypothesis import HealthCheck, settings


def test_the_suite_runs_hypothesis_without_deadlines():
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


def test_settings_given_at_a_test_keep_the_profile_s_deadline():
    # What `@settings(max_examples=300)` on a test builds: it starts from the loaded profile.
    assert settings(max_examples=300).deadline is None
