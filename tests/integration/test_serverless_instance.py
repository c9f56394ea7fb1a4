"""A serverless instance in-process on loopback, with a kv node as the lab's storage: it
loads one function, runs one request at a time, keeps serving after a function's error,
and opens only to its own token — never to the lab credential."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from nodes.common.auth import Credential, with_credential
from nodes.rpc import serverless_pb2, serverless_pb2_grpc
from nodes.serverless.instance import SPEC as INSTANCE_SPEC
from tests.integration.conftest import address_of

COUNTER = """
def handle(event, context):
    count = int(context.storage.get("n", "0")) + 1
    context.storage.put("n", str(count))
    context.log(f"count {count}")
    return count
"""


@pytest.fixture
def instance(lab):
    storage = lab.start("storage")
    token = Credential.generate()
    node = lab.start("fn-test-1", spec=INSTANCE_SPEC, INSTANCE_TOKEN=token.metadata()[0][1],
                     FN_STORAGE=address_of(storage))
    own = with_credential(lab.bare_channel(node), token)
    return serverless_pb2_grpc.InstanceStub(own), node


def load(stub, source: str, name: str = "f") -> None:
    stub.Load(serverless_pb2.LoadRequest(name=name, source=source), timeout=5)


def run(stub, data: str = "", request_id: str = "r"):
    return stub.Run(serverless_pb2.RunRequest(id=request_id, data=data, timeout_seconds=5),
                    timeout=10)


def test_a_function_keeps_its_state_in_the_labs_storage_not_in_the_instance(instance):
    stub, _ = instance
    load(stub, COUNTER)
    replies = [run(stub) for _ in range(3)]
    assert [r.result for r in replies] == ["1", "2", "3"]
    assert list(replies[-1].logs) == ["count 3"]


def test_only_the_instances_own_token_opens_it(lab, instance):
    _, node = instance
    for channel in (lab.channel(node), lab.bare_channel(node)):  # the lab's, and none
        with pytest.raises(grpc.RpcError) as raised:
            load(serverless_pb2_grpc.InstanceStub(channel), COUNTER)
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_an_error_is_an_answer_and_the_instance_serves_the_next_request(instance):
    stub, _ = instance
    load(stub, "def handle(event, context):\n    return 10 // event\n")
    failed = run(stub, "0")
    assert not failed.ok and failed.error == "ZeroDivisionError: integer division or modulo " \
                                             "by zero (line 2)"
    assert run(stub, "5").result == "2"
    bad = run(stub, "{not json")
    assert not bad.ok and "not JSON" in bad.error


def test_one_request_at_a_time(instance):
    stub, _ = instance
    load(stub, "import time\ndef handle(event, context):\n    time.sleep(event)\n    return 1\n")
    first = threading.Thread(target=run, args=(stub, "1"))
    first.start()
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as raised:
        run(stub, "0")
    first.join()
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert run(stub, "0").ok  # free again


def test_it_loads_one_function_once_and_says_what_is_wrong(instance):
    stub, _ = instance
    with pytest.raises(grpc.RpcError) as raised:
        run(stub)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as raised:
        load(stub, "def handle(event, context)\n")
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "does not load" in raised.value.details()
    load(stub, "def handle(event, context):\n    return 1\n")
    with pytest.raises(grpc.RpcError) as raised:
        load(stub, "def handle(event, context):\n    return 2\n", name="g")
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
