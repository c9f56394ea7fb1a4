"""The cluster's pieces that need no host: host specs, the registry certificate, what
destroy counts as made by the cluster, errors gathered from every host, and an SSH
connection to a port where nothing listens."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from cryptography import x509

from distlab.cluster.certificate import self_signed, ssh_key_pair
from distlab.cluster.cluster import made_since, on_each
from distlab.cluster.hosts import HostSpec, parse_host, parse_hosts
from distlab.cluster.ssh import Shell
from distlab.errors import ClusterError, UsageError


@pytest.mark.parametrize("text, spec", [
    ("root@10.0.0.2", HostSpec("root", "10.0.0.2", 22)),
    ("pc2.lab", HostSpec("root", "pc2.lab", 22)),
    ("alice@pc2.lab:2222", HostSpec("alice", "pc2.lab", 2222)),
    ("root@[fd00::2]:22", HostSpec("root", "fd00::2", 22)),
])
def test_host_specs_parse(text, spec):
    assert parse_host(text) == spec


@pytest.mark.parametrize("text", ["root@@x", "root@", "@x", "root@x:0", "root@x:70000",
                                  "root@x:ssh", "a b@x", ""])
def test_bad_host_specs_say_how_to_write_one(text):
    with pytest.raises(UsageError) as raised:
        parse_host(text)
    assert text.strip() in str(raised.value) or "port" in str(raised.value)
    assert raised.value.hint


def test_a_host_named_twice_is_refused():
    with pytest.raises(UsageError, match="10.0.0.2:22 is named twice"):
        parse_hosts(["root@10.0.0.2", "admin@10.0.0.2:22"])


def test_str_of_a_spec_reads_back():
    for text in ("root@10.0.0.2", "alice@pc:2222"):
        assert str(parse_host(text)) == text


def test_the_registry_certificate_names_the_address():
    for address, kind in (("10.0.0.2", x509.IPAddress), ("pc2.lab", x509.DNSName)):
        pem, key = self_signed(address)
        certificate = x509.load_pem_x509_certificate(pem)
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(kind)
        wanted = ipaddress.ip_address(address) if kind is x509.IPAddress else address
        assert names == [wanted]
        assert b"PRIVATE KEY" in key


def test_test_host_keys_are_openssh_pairs():
    private, public = ssh_key_pair()
    assert private.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.startswith(b"ssh-ed25519 ")


def test_volumes_made_since_the_cluster_began_are_its_own():
    listing = ("old 2026-12-07T10:00:00Z\n"
               "anonymous 2026-12-07T12:00:01Z\n"
               "offset 2026-12-07T13:30:00+01:00\n"  # 12:30 UTC, written in local time
               "Error: No such volume: gone\n")
    assert made_since(listing, "2026-12-07T12:00:00Z") == ["anonymous", "offset"]


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


def test_errors_from_every_host_are_reported_together():
    def act(shell):
        if shell.name != "ok":
            raise ClusterError(f"{shell.name}: broken", hint="fix it")
        return shell.name

    assert on_each([_Named("ok")], act) == ["ok"]
    with pytest.raises(ClusterError) as raised:
        on_each([_Named("a"), _Named("ok"), _Named("b")], act)
    assert str(raised.value) == "a: broken; b: broken" and raised.value.hint == "fix it"


def test_a_host_where_nothing_listens_is_named_with_the_fix():
    with socket.socket() as probe:  # a free loopback port, closed again: refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shell = Shell(parse_host(f"root@127.0.0.1:{port}"))
    with pytest.raises(ClusterError) as raised:
        shell.connect()
    assert str(raised.value).startswith(f"root@127.0.0.1:{port}: cannot reach it over SSH")
    assert f"sshd listens on port {port}" in raised.value.hint


def test_a_swarm_of_three_or_more_outlives_the_loss_of_a_manager():
    from distlab.cluster.cluster import managers_of

    assert [managers_of(n) for n in range(1, 9)] == [1, 1, 3, 3, 3, 3, 5, 5]
