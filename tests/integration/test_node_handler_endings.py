"""How a call ends when a handler does not end it with a plain reply or abort, on threaded
and asyncio servers: found by the fuzz suite (tests/integration/fuzz).

- A servicer that sets a status code and then raises (grpc's generated base
  classes do this for a method they do not implement, e.g. grpc.health.v1's
  List) is answered with that code and its own details, not with
  "Unexpected <class 'NotImplementedError'>" and a traceback in the log.
- A request stream that breaks because the caller's message was too big (or
  the caller went away) is the caller's doing: never recorded INTERNAL nor
  logged as a bug (CANCELLED, or OK when the handler only saw the stream end).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from nodes.app.__main__ import SPEC as APP_SPEC
from nodes.rpc import control_pb2
from tests.integration.conftest import SMALL_LIMITS

LIST = "/grpc.health.v1.Health/List"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
LIMIT = SMALL_LIMITS["MAX_MESSAGE_BYTES"]


def start(lab, server: str):
    if server == "threaded":
        return lab.start("kv-1", **SMALL_LIMITS)
    return lab.start("app-1", spec=APP_SPEC, DATA_MASTER="127.0.0.1:1",
                     APP_ARCHITECTURE="async", MAX_MESSAGE_BYTES=LIMIT)


def handled(lab, node, method: str) -> dict[str, float]:
    """How the node recorded the calls of `method` it served, by code."""
    samples = lab.scrape(node).samples
    return {dict(labels)["code"]: value for (name, labels), value in samples.items()
            if name == "distlab_rpc_server_handled_total" and ("method", method) in labels}


def failure(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=5)
    return caught.value


@pytest.mark.parametrize("server", ["threaded", "async"])
def test_an_unimplemented_method_says_so_without_python_internals(lab, server, capsys,
                                                                  caplog):
    node = start(lab, server)
    error = failure(lab.bare_channel(node).unary_unary(LIST), b"")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == "Method not implemented!"
    assert lab.scrape(node).get("distlab_rpc_server_handled_total", method=LIST,
                                code="UNIMPLEMENTED") == 1
    assert "rpc_internal_error" not in capsys.readouterr().out
    assert not [record for record in caplog.records if record.name.startswith("grpc")]


@pytest.mark.parametrize("server", ["threaded", "async"])
def test_an_oversized_message_in_a_request_stream_is_not_a_bug(lab, server, capsys):
    node = start(lab, server)
    oversized = reflection_pb2.ServerReflectionRequest(host="x" * LIMIT).SerializeToString()
    first = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    replies = lab.bare_channel(node).stream_stream(REFLECTION)(iter([first, oversized]),
                                                               timeout=5)
    with pytest.raises(grpc.RpcError) as caught:
        list(replies)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The handler may still be finishing: wait until the node has recorded how it ended.
    endings = lab.wait_until(lambda: handled(lab, node, REFLECTION), what="the call recorded")
    assert "INTERNAL" not in endings and endings.keys() <= {"CANCELLED", "OK"}, endings
    assert "rpc_internal_error" not in capsys.readouterr().out


@pytest.mark.parametrize("server", ["threaded", "async"])
def test_health_watchers_that_went_away_hold_no_thread(lab, server):
    """Each Watch held one of the asyncio server's threads for good once its caller had gone
    (the health servicer waits for a callback that grpc.aio never ran): after APP_WORKERS
    watchers, every health check and Control call of that node hung."""
    node = lab.start("app-1", spec=APP_SPEC, DATA_MASTER="127.0.0.1:1",
                     APP_ARCHITECTURE=server, APP_WORKERS=2)
    watch = health_pb2_grpc.HealthStub(lab.bare_channel(node)).Watch
    for _ in range(4):
        replies = watch(health_pb2.HealthCheckRequest(), timeout=0.2)
        with pytest.raises(grpc.RpcError) as caught:
            for reply in replies:
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = lab.health(node).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert lab.control(node).Status(control_pb2.StatusRequest(), timeout=5).node == "app-1"
