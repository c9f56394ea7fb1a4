"""The registers core (the app tier's KV service) against an in-memory data tier: values
round-trip under "kv/", Delete says truly whether it removed the key, bad input changes
nothing, and a data tier that does not answer is reported as "not applied" or "unknown",
never resent."""

from __future__ import annotations

import grpc
import pytest

from nodes.app.bank import BankError
from nodes.app.registers import MAX_KEY_CHARS, MAX_LIST_KEYS, MAX_VALUE_BYTES, Registers
from nodes.rpc import chain_pb2, kv_pb2
from tests.unit.nodes.app.memory_data import MemoryData, drive

Code = grpc.StatusCode


class Client:
    """A registers core over a MemoryData, with one-line helpers for each call."""

    def __init__(self, data: MemoryData | None = None, *, txn_attempts: int = 8) -> None:
        self.data = data if data is not None else MemoryData()
        self.conflicts: list[str] = []
        self.registers = Registers(txn_attempts=txn_attempts, on_conflict=self.conflicts.append,
                                   jitter=lambda: 1.0)

    def put(self, key: str, value: bytes) -> int:
        return drive(self.registers.put(kv_pb2.PutRequest(key=key, value=value)),
                     self.data).version

    def get(self, key: str) -> tuple[bytes, int]:
        reply = drive(self.registers.get(kv_pb2.GetRequest(key=key)), self.data)
        return reply.value, reply.version

    def delete(self, key: str) -> bool:
        return drive(self.registers.delete(kv_pb2.DeleteRequest(key=key)), self.data).existed

    def list(self, prefix: str = "", limit: int = 0) -> tuple[list[str], bool]:
        reply = drive(self.registers.list(kv_pb2.ListRequest(prefix=prefix, limit=limit)),
                      self.data)
        return list(reply.keys), reply.truncated


def refusal(call, *args) -> BankError:
    with pytest.raises(BankError) as caught:
        call(*args)
    return caught.value


@pytest.fixture
def client() -> Client:
    return Client()


# -- Put and Get -----------------------------------------------------------------------------

def test_put_stores_raw_bytes_under_kv_and_get_returns_them_with_the_write_seq(client):
    first = client.put("x", b"\x00one")
    assert client.data.data["kv/x"] == (b"\x00one", first)
    assert client.get("x") == (b"\x00one", first)
    second = client.put("x", b"two")
    assert second > first
    assert client.get("x") == (b"two", second)


def test_get_of_a_missing_key_is_not_found_and_names_it(client):
    client.data.data["x"] = (b"not ours", 1)  # a key outside "kv/" is not a KV key
    error = refusal(client.get, "x")
    assert error.code == Code.NOT_FOUND and error.message == "no key 'x'"


def test_an_empty_value_is_a_value(client):
    version = client.put("empty", b"")
    assert client.get("empty") == (b"", version)


# -- Delete ----------------------------------------------------------------------------------

def test_delete_says_whether_the_key_existed(client):
    client.put("x", b"1")
    assert client.delete("x") is True
    assert "kv/x" not in client.data.data
    assert refusal(client.get, "x").code == Code.NOT_FOUND
    txns = client.data.txns
    assert client.delete("x") is False
    assert client.data.txns == txns  # nothing to delete: no write at all


def test_a_delete_racing_a_put_re_reads_and_deletes_the_newer_value(client):
    client.put("x", b"old")

    def overwrite(data: MemoryData) -> None:
        data.before_txn = None
        client.put("x", b"new")

    client.data.before_txn = overwrite
    assert client.delete("x") is True
    assert "kv/x" not in client.data.data
    assert client.conflicts == ["delete"] and len(client.data.pauses) == 1


def test_a_delete_racing_another_delete_reports_that_it_found_nothing(client):
    client.put("x", b"1")
    rival: list[bool] = []

    def delete_first(data: MemoryData) -> None:
        data.before_txn = None
        rival.append(client.delete("x"))

    client.data.before_txn = delete_first
    assert client.delete("x") is False
    assert rival == [True]  # exactly one of the two deletes removed it


def test_endless_contention_gives_up_with_aborted_and_deletes_nothing():
    client = Client(txn_attempts=3)
    client.put("x", b"0")
    client.data.before_txn = lambda data: data.apply(chain_pb2.TxnRequest(
        puts=[chain_pb2.KeyValue(key="kv/x", value=b"again")]))
    error = refusal(client.delete, "x")
    assert error.code == Code.ABORTED and error.message.startswith("not applied: ")
    assert "after 3 attempts" in error.message
    assert "kv/x" in client.data.data
    assert client.conflicts == ["delete"] * 3
    assert client.data.pauses == [0.002, 0.004, 0.008]  # backoff doubles


def test_registers_need_at_least_one_attempt():
    with pytest.raises(ValueError, match="txn_attempts must be >= 1"):
        Registers(txn_attempts=0)


# -- List ------------------------------------------------------------------------------------

def test_list_gives_keys_without_the_kv_prefix_in_order(client):
    for key in ("b/2", "a/1", "b/1", "c"):
        client.put(key, b"v")
    client.data.data["bank/account/b"] = (b"{}", 1)
    assert client.list() == (["a/1", "b/1", "b/2", "c"], False)
    assert client.list("b/") == (["b/1", "b/2"], False)
    assert client.list("zzz") == ([], False)


def test_list_stops_at_its_limit_and_says_it_was_truncated(client):
    for n in range(5):
        client.put(f"k{n}", b"v")
    assert client.list("k", limit=3) == (["k0", "k1", "k2"], True)
    assert client.list("k", limit=5) == ([f"k{n}" for n in range(5)], False)


def test_list_without_a_limit_returns_at_most_the_cap(client):
    for n in range(MAX_LIST_KEYS + 1):
        client.data.data[f"kv/{n:05d}"] = (b"v", 1)
    keys, truncated = client.list()
    assert len(keys) == MAX_LIST_KEYS and truncated


# -- Validation ------------------------------------------------------------------------------

BAD_KEYS = [
    ("", "key must not be empty"),
    ("k" * (MAX_KEY_CHARS + 1), f"key is {MAX_KEY_CHARS + 1} characters; the limit is "
                                f"{MAX_KEY_CHARS}"),
    ("new\nline", "must be printable text (no control characters)"),
    ("nul\x00", "must be printable text"),
    ("tab\t", "must be printable text"),
    ("nbsp\u00a0", "must be printable text"),
]


@pytest.mark.parametrize(("key", "fragment"), BAD_KEYS)
def test_bad_keys_are_invalid_argument_before_any_data_tier_call(client, key, fragment):
    for call in (lambda: client.put(key, b"v"), lambda: client.get(key),
                 lambda: client.delete(key)):
        error = refusal(call)
        assert error.code == Code.INVALID_ARGUMENT and fragment in error.message
    assert (client.data.reads, client.data.txns) == (0, 0)


def test_the_longest_key_and_value_are_accepted(client):
    key, value = "k" * MAX_KEY_CHARS, b"v" * MAX_VALUE_BYTES
    version = client.put(key, value)
    assert client.get(key) == (value, version)
    assert len("kv/" + key) == 256  # exactly what the data tier takes


def test_a_value_over_64_kib_is_invalid_argument_and_says_the_limit(client):
    error = refusal(client.put, "x", b"v" * (MAX_VALUE_BYTES + 1))
    assert error.code == Code.INVALID_ARGUMENT
    assert error.message == "value is 65537 bytes; the limit is 65536 (64 KiB)"
    assert client.data.txns == 0


@pytest.mark.parametrize(("prefix", "limit", "fragment"), [
    ("p" * (MAX_KEY_CHARS + 1), 0, f"prefix is {MAX_KEY_CHARS + 1} characters"),
    ("bad\x7f", 0, "prefix 'bad\\x7f' must be printable text"),
    ("", MAX_LIST_KEYS + 1, f"limit 1001 is above the cap of {MAX_LIST_KEYS}"),
])
def test_bad_lists_are_invalid_argument(client, prefix, limit, fragment):
    error = refusal(client.list, prefix, limit)
    assert error.code == Code.INVALID_ARGUMENT and fragment in error.message
    assert client.data.reads == 0


# -- A data tier that does not answer --------------------------------------------------------

def test_a_put_certainly_not_applied_says_so(client):
    client.data.outages = ["refused"]
    error = refusal(client.put, "x", b"v")
    assert error.code == Code.UNAVAILABLE and not error.outcome_unknown
    assert error.message.startswith("not applied: data tier unavailable: injected")
    assert "kv/x" not in client.data.data


@pytest.mark.parametrize("outage", ["lost", "maybe"])
def test_a_put_whose_answer_was_lost_is_unknown_and_not_resent(client, outage):
    client.data.outages = [outage]
    error = refusal(client.put, "x", b"v")
    assert error.code == Code.UNAVAILABLE and error.outcome_unknown
    assert "the outcome of this put is unknown (it may have been applied)" in error.message
    assert "not applied" not in error.message
    assert client.data.txns == 1
    assert ("kv/x" in client.data.data) == (outage == "lost")


def test_a_delete_whose_answer_was_lost_is_unknown_and_not_resent(client):
    client.put("x", b"v")
    client.data.outages = ["lost"]
    error = refusal(client.delete, "x")
    assert error.code == Code.UNAVAILABLE and error.outcome_unknown
    assert "the outcome of this delete is unknown" in error.message
    assert client.data.txns == 2  # the put, and the delete once


def test_a_delete_whose_read_fails_was_not_applied(client):
    client.put("x", b"v")
    client.data.read_outages = 1
    error = refusal(client.delete, "x")
    assert error.code == Code.UNAVAILABLE and error.message.startswith("not applied: ")
    assert "kv/x" in client.data.data


@pytest.mark.parametrize("call", [lambda c: c.get("x"), lambda c: c.list("")])
def test_a_failed_read_is_unavailable(client, call):
    client.data.read_outages = 1
    error = refusal(call, client)
    assert error.code == Code.UNAVAILABLE and not error.outcome_unknown
    assert error.message == "data tier unavailable: injected: read failed"
