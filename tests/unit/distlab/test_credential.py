"""The lab credential on the host: made once, in an owner-only directory, never re-made under a
running lab, gone with `clean`."""

from __future__ import annotations

import stat

import pytest

from distlab import credential
from distlab.errors import DistlabError


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_makes_a_random_token_behind_owner_only_directories(tmp_path):
    path = credential.ensure(tmp_path)
    ((_, token),) = credential.read(tmp_path).metadata()
    assert path == tmp_path / ".distlab" / "secrets" / "credential"
    assert len(token) == 64 and int(token, 16) >= 0
    assert mode(path.parent) == 0o700
    # Readable by the node's own user through Compose's bind mount; nobody else reaches it.
    assert mode(path) == 0o444
    other = tmp_path / "other"
    other.mkdir()
    assert credential.ensure(other) and credential.read(other).metadata()[0][1] != token


def test_ensure_keeps_the_token_a_running_lab_was_given(tmp_path):
    credential.ensure(tmp_path)
    token = credential.read(tmp_path).metadata()
    credential.ensure(tmp_path)
    assert credential.read(tmp_path).metadata() == token


def test_grafana_gets_a_password_of_its_own_not_the_default(tmp_path):
    credential.ensure(tmp_path)
    password = (tmp_path / credential.GRAFANA_PASSWORD_PATH).read_text().strip()
    assert len(password) >= 20 and password != "admin"
    assert mode(tmp_path / credential.GRAFANA_PASSWORD_PATH) == 0o444


def test_no_credential_before_the_first_up_and_none_after_clean(tmp_path):
    assert credential.read(tmp_path) is None
    credential.ensure(tmp_path)
    credential.remove(tmp_path)
    assert credential.read(tmp_path) is None
    assert not (tmp_path / credential.GRAFANA_PASSWORD_PATH).exists()
    credential.remove(tmp_path)  # twice is fine


def test_a_damaged_credential_is_a_clear_error_not_a_traceback(tmp_path):
    credential.ensure(tmp_path).chmod(0o644)
    credential.path_of(tmp_path).write_text("not a token\n")
    with pytest.raises(DistlabError, match="unusable") as raised:
        credential.read(tmp_path)
    assert "not a token" not in str(raised.value) and "distlab clean" in raised.value.hint
