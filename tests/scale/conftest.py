"""The scale tests bring labs up in Docker like the e2e tests, with the same fixtures."""

from tests.e2e.conftest import engine  # noqa: F401 - a fixture, used by lab_fixture's
