"""The lab credential on the host: made once, owner-only where it lives, never re-made under a
running lab, gone with `clean`."""

from __future__ import annotations

import stat

from distlab import credential


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_makes_a_random_token_behind_owner_only_directories(tmp_path):
    path = credential.ensure(tmp_path)
    token = credential.read(tmp_path)
    assert path == tmp_path / ".distlab" / "secrets" / "credential"
    assert token is not None and len(token) == 64 and int(token, 16) >= 0
    assert mode(tmp_path / ".distlab") == 0o700 and mode(path.parent) == 0o700
    # Readable by the node's own user through Compose's bind mount; nobody else reaches it.
    assert mode(path) == 0o444
    other = tmp_path / "other"
    other.mkdir()
    assert credential.ensure(other) and credential.read(other) != token


def test_ensure_keeps_the_token_a_running_lab_was_given(tmp_path):
    credential.ensure(tmp_path)
    token = credential.read(tmp_path)
    credential.ensure(tmp_path)
    assert credential.read(tmp_path) == token


def test_no_credential_before_the_first_up_and_none_after_clean(tmp_path):
    assert credential.read(tmp_path) is None
    credential.ensure(tmp_path)
    credential.remove(tmp_path)
    assert credential.read(tmp_path) is None
    credential.remove(tmp_path)  # twice is fine
