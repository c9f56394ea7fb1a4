"""Unit tests of the app role (nodes/app)."""
