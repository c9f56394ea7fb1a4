"""nodes/common/auth.py: reading the credential, comparing it, and which calls it guards."""

import stat

import pytest
from prometheus_client import CollectorRegistry

from nodes.common import auth
from nodes.common.auth import (
    METADATA_KEY,
    Credential,
    CredentialCheck,
    CredentialError,
    service_methods,
)
from nodes.common.config import COMMON_SETTINGS, load_settings
from nodes.common.metrics import NodeMetrics
from nodes.rpc import chain_pb2, control_pb2

TOKEN = "0123456789abcdef" * 4
STATUS = "/distlab.control.Control/Status"
GET = "/distlab.kv.KV/Get"


def check(credential=None, protected=(STATUS,)) -> tuple[CredentialCheck, NodeMetrics]:
    metrics = NodeMetrics(CollectorRegistry(), node="n", role="r", version="0")
    return CredentialCheck(credential, protected, metrics.auth_refused), metrics


def refusals(metrics: NodeMetrics, method: str) -> float | None:
    return metrics.registry.get_sample_value("distlab_auth_refused_total", {"method": method})


def test_the_file_is_read_with_its_whitespace_stripped(tmp_path):
    path = tmp_path / "credential"
    path.write_text(f"  {TOKEN}\n\n")
    assert Credential.from_file(path).metadata() == ((METADATA_KEY, TOKEN),)


@pytest.mark.parametrize("contents, fragment", [
    (None, "does not exist"),
    ("", "does not hold 64 lowercase hex characters"),
    ("hunter2-is-my-password", "does not hold 64 lowercase hex characters"),
    (TOKEN.upper(), "does not hold 64 lowercase hex characters"),
])
def test_a_missing_or_malformed_file_is_an_error_that_never_quotes_it(tmp_path, contents,
                                                                       fragment):
    path = tmp_path / "credential"
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(CredentialError, match=fragment) as caught:
        Credential.from_file(path)
    assert not contents or contents not in str(caught.value)


def test_the_token_never_shows_in_repr_or_str():
    credential = Credential(TOKEN)
    assert TOKEN not in repr(credential) and TOKEN not in str(credential)
    assert TOKEN not in repr({"credential": credential})


def test_a_written_credential_is_readable_by_its_owner_only_and_never_overwritten(tmp_path):
    credential = Credential.generate()
    path = tmp_path / "credential"
    credential.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Credential.from_file(path).matches(credential.metadata()[0][1])
    with pytest.raises(FileExistsError):
        Credential.generate().write(path)


def test_two_generated_credentials_differ():
    first, second = Credential.generate(), Credential.generate()
    assert not first.matches(second.metadata()[0][1])


def test_the_comparison_is_constant_time(monkeypatch):
    compared = []

    def spy(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    credential = Credential(TOKEN)
    assert credential.matches(TOKEN)
    assert not credential.matches("f" * 64)
    assert compared == [(TOKEN.encode(), TOKEN.encode()), (b"f" * 64, TOKEN.encode())]


def test_a_protected_method_needs_the_right_credential_and_counts_each_refusal():
    guard, metrics = check(Credential(TOKEN))
    assert refusals(metrics, STATUS) == 0  # the series exists before the first refusal
    assert not guard.allows(STATUS, ())
    assert not guard.allows(STATUS, [(METADATA_KEY, "f" * 64)])
    assert not guard.allows(STATUS, [(METADATA_KEY, TOKEN[:-1])])
    assert guard.allows(STATUS, [("x-distlab-node", "app-1"), (METADATA_KEY, TOKEN)])
    assert refusals(metrics, STATUS) == 3


def test_open_methods_need_nothing_and_never_make_a_series():
    guard, metrics = check(Credential(TOKEN))
    assert guard.allows(GET, ())
    assert guard.allows("/made.up/Method", ())
    assert refusals(metrics, GET) is None and refusals(metrics, "/made.up/Method") is None


def test_without_a_credential_every_protected_call_is_refused():
    guard, metrics = check(None)
    assert not guard.allows(STATUS, [(METADATA_KEY, TOKEN)])
    assert not guard.allows(STATUS, [(METADATA_KEY, "")])
    assert guard.allows(GET, ())
    assert refusals(metrics, STATUS) == 2


def test_service_methods_names_a_services_methods_in_full():
    master = chain_pb2.DESCRIPTOR.services_by_name["Master"]
    assert service_methods(master) == {"/distlab.chain.Master/GetConfig",
                                       "/distlab.chain.Master/Register",
                                       "/distlab.chain.Master/Replace"}
    assert service_methods(master, "Register") == {"/distlab.chain.Master/Register"}
    with pytest.raises(ValueError, match="has no method Regsiter"):
        service_methods(master, "Regsiter")
    assert STATUS in service_methods(control_pb2.DESCRIPTOR.services_by_name["Control"])


def test_the_credential_file_is_a_setting_with_the_secrets_path_as_default():
    assert load_settings(COMMON_SETTINGS, {})["CREDENTIAL_FILE"] == \
        "/run/secrets/distlab_credential"
    assert load_settings(COMMON_SETTINGS, {"CREDENTIAL_FILE": "/tmp/c"})["CREDENTIAL_FILE"] == \
        "/tmp/c"
