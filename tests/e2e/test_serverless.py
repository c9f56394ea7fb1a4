"""The serverless lab, for real: functions deployed from the host to the runner machine,
each instance a container the runner starts through the engine proxy, paused by the cgroup
freezer, removed when idle. One lab for the module.

What a user of OpenFaaS or OpenWhisk would notice: the example functions answer right from
the CLI's client and over HTTP with the same JSON; the second call is warm, a call after a
pause is served by the paused instance, a call with the pool's container is a prewarm start
and one beyond it cold; a function over its timeout or its memory is stopped with the
reason and its instance replaced; a function's exception comes back with its line and
logs and the instance serves the next call; a payload over 1 MiB is refused before any
instance is touched; an idle function scales to zero; concurrent calls never run two at
once on an instance nor exceed max_instances; an instance cannot reach the engine nor
write its root filesystem; deployed functions survive the runner's restart, and `clean`
removes instances a killed runner left.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from distlab.observe import Prometheus
from distlab.serverless.client import FunctionError, FunctionsClient, runner_channel
from distlab.testbed import PROMETHEUS_URL
from tests.e2e.conftest import assert_dashboards_answer, eventually, lab_fixture, run_valid

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = REPO / "functions"
HTTP = f"http://127.0.0.1:{os.environ.get('DISTLAB_FN_HTTP_PORT', '8080')}"
PAUSE_AFTER = 5.0  # compose's FN_PAUSE_AFTER_SECONDS default

testbed = lab_fixture("serverless")


@pytest.fixture(scope="module")
def examples(testbed) -> None:
    client = FunctionsClient(runner_channel(testbed))
    for name in ("echo", "fib", "counter", "wordcount"):
        client.deploy(name, FUNCTIONS / f"{name}.py")


@pytest.fixture
def fn(testbed, examples) -> FunctionsClient:
    """A client of the runner as it is now (a scenario may have restarted it: another
    published port)."""
    return FunctionsClient(runner_channel(testbed))


def instances(testbed) -> list[str]:
    """The instance containers running now (the runner makes them, not Compose)."""
    return [m.name for m in testbed.machines() if m.info.role == "serverless-instance"
            and m.info.state == "running"]


def post(path: str, body: bytes) -> tuple[int, dict, dict]:
    request = urllib.request.Request(HTTP + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_the_example_functions_answer_right_over_grpc_and_http(fn):
    reply = fn.invoke("echo", '{"text": "hi"}')
    assert reply.ok and json.loads(reply.result) == {"event": {"text": "hi"}, "id": reply.id}
    assert reply.logs == ["echo {'text': 'hi'}"]
    assert json.loads(fn.invoke("fib", '{"n": 20}').result) == {"n": 20, "fib": 6765}
    counts = [json.loads(fn.invoke("counter", '{"name": "e2e"}').result)["count"]
              for _ in range(3)]
    assert counts == [1, 2, 3]
    text = "the ring and the chain and the peer"
    assert fn.invoke("wordcount", json.dumps({"put": "doc", "text": text})).ok
    words = json.loads(fn.invoke("wordcount", '{"key": "doc", "top": 1}').result)
    assert words == {"words": 8, "distinct": 5, "top": [["the", 3]]}
    status, headers, body = post("/function/fib", b'{"n": 15}')
    assert (status, body) == (200, {"n": 15, "fib": 610})
    assert headers["X-Start-Path"] in ("warm", "paused", "prewarm", "cold")
    status, _, body = post("/function/counter", b'{"name": "e2e"}')
    assert (status, body["count"]) == (200, 4)  # the same storage as the gRPC calls


def prometheus_value(expr: str) -> float:
    result = Prometheus(PROMETHEUS_URL).data(expr)["result"]
    return float(result[0]["value"][1]) if result else 0.0


def pool_ready(testbed) -> bool:
    """Whether the runner's prewarm pool holds a container ready to specialize."""
    with testbed.machine("runner-1").control() as control:
        return control.status().state["pool"] != "0"


def test_starts_take_the_cheapest_path_warm_paused_prewarm_cold(fn, testbed):
    fn.deploy("paths", "import time\ndef handle(event, context):\n"
                       "    time.sleep(3 if event == 'slow' else 0)\n    return event\n",
              max_instances=4)
    eventually(lambda: pool_ready(testbed), timeout=60, what="a prewarmed container")
    assert fn.invoke("paths", "1").path == "prewarm"  # the pool's container, specialized
    assert fn.invoke("paths", "2").path == "warm"
    time.sleep(PAUSE_AFTER + 2)  # idle past pause_after: frozen
    assert fn.invoke("paths", "3").path == "paused"
    # Four at once, each long enough that waiting for a busy instance loses to a new one:
    # one instance is there, one comes from the refilled pool, the rest start cold.
    with ThreadPoolExecutor(4) as pool:
        paths = sorted(r.path for r in pool.map(
            lambda _: fn.invoke("paths", '"slow"'), range(4)))
    assert "cold" in paths, paths
    listed = {f.function.name: f for f in fn.list()}["paths"]
    assert listed.cold_starts["prewarm"] >= 1 and listed.cold_starts["paused"] == 1
    assert listed.invocations["ok"] == 7


def test_a_functions_error_comes_back_with_its_line_and_the_instance_serves_on(fn):
    source = ("def handle(event, context):\n    print('looking at', event)\n"
              "    return event['text'].upper()\n")
    fn.deploy("upper", source)
    failed = fn.invoke("upper", '{"other": 1}')
    assert not failed.ok and failed.error == "KeyError: 'text' (line 3)"
    assert failed.logs == ["looking at {'other': 1}"]
    served = fn.invoke("upper", '{"text": "ok"}')
    assert served.ok and json.loads(served.result) == "OK"
    assert served.instance == failed.instance
    assert any("KeyError" in line for line in fn.logs("upper"))


def test_over_its_timeout_a_function_is_stopped_and_its_instance_replaced(fn, testbed):
    fn.deploy("slow", "import time\ndef handle(event, context):\n    time.sleep(event)\n"
                      "    return event\n", timeout=1.0)
    first = fn.invoke("slow", "0")
    with pytest.raises(FunctionError) as raised:
        fn.invoke("slow", "30")
    assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "slow timed out after 1 s" in str(raised.value)
    eventually(lambda: first.instance not in instances(testbed), timeout=30,
               what=f"{first.instance} removed")
    again = fn.invoke("slow", "0")
    assert again.ok and again.instance != first.instance


def test_over_its_memory_a_function_is_killed_and_the_caller_told(fn):
    fn.deploy("hog", "def handle(event, context):\n"
                     "    return len([bytearray(1 << 20) for _ in range(event)])\n",
              memory_bytes=64 * 1024 * 1024)
    assert json.loads(fn.invoke("hog", "8").result) == 8
    with pytest.raises(FunctionError) as raised:
        fn.invoke("hog", "200")
    assert raised.value.code is grpc.StatusCode.ABORTED
    assert "hog exceeded 64 MiB" in str(raised.value)
    assert json.loads(fn.invoke("hog", "8").result) == 8  # a new instance serves


def test_bad_input_gets_a_clear_error_and_touches_no_instance(fn, testbed):
    before = fn.list()
    too_big = json.dumps("a" * (1024 * 1024 + 10))
    with pytest.raises(FunctionError, match="over the 1024 KiB limit") as raised:
        fn.invoke("echo", too_big)
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    status, _, body = post("/function/echo", too_big.encode())
    assert status == 413 and "over the 1024 KiB limit" in body["error"]
    status, _, body = post("/function/echo", b"not json")
    assert status == 400 and "not JSON" in body["error"]
    status, _, body = post("/function/nope", b"{}")
    assert status == 404 and "no function 'nope'" in body["error"]
    with pytest.raises(FunctionError, match="does not compile"):
        fn.deploy("broken", "def handle(event, context)\n    return 1\n")
    with pytest.raises(FunctionError, match="no handle"):
        fn.deploy("nohandle", "x = 1\n")
    with pytest.raises(FunctionError, match="function name"):
        fn.deploy("Bad Name", "def handle(e, c):\n    return 1\n")
    fn.deploy("noimport", "import no_such_module\ndef handle(event, context):\n    return 1\n")
    with pytest.raises(FunctionError, match="could not start: .*No module named") as raised:
        fn.invoke("noimport", "")
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    after = {f.function.name: f.invocations for f in fn.list()}
    assert after["echo"] == {f.function.name: f.invocations for f in before}["echo"]
    assert fn.invoke("echo", '"still serving"').ok  # and every other function with it


def test_a_burst_scales_out_then_to_zero_and_the_next_call_starts_an_instance(fn, testbed):
    fn.deploy("brief", "import time\ndef handle(event, context):\n    time.sleep(event)\n"
                       "    return 1\n", keep_alive=3.0, max_instances=3, timeout=10.0)
    # Each call runs 5 s: far longer than a cold start, so none waits for a busy instance.
    with ThreadPoolExecutor(3) as pool:
        burst = list(pool.map(lambda _: fn.invoke("brief", "5"), range(3)))
    assert len({r.instance for r in burst}) == 3  # one request at a time each
    eventually(lambda: not {f.function.name: f for f in fn.list()}["brief"].instances,
               timeout=30, what="brief scaled to zero")
    after = fn.invoke("brief", "0")
    assert after.path in ("prewarm", "cold"), after.path  # no instance was left to be warm
    query = f'sum(distlab_serverless_starts_total{{function="brief", path="{after.path}"}})'
    eventually(lambda: prometheus_value(query) >= 1, timeout=60,
               what=f"the {after.path} start in Prometheus")


def test_concurrent_calls_run_one_per_instance_within_max_instances(fn):
    source = ("import os, time\ndef handle(event, context):\n"
              "    marker = '/data/busy'\n"
              "    if os.path.exists(marker):\n"
              "        raise RuntimeError('two requests at once on one instance')\n"
              "    open(marker, 'w').close()\n"
              "    time.sleep(0.3)\n    os.remove(marker)\n    return event\n")
    fn.deploy("one-at-a-time", source, max_instances=2)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: fn.invoke("one-at-a-time", str(i)), range(8)))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok]
    assert sorted(json.loads(r.result) for r in replies) == list(range(8))
    assert len({r.instance for r in replies}) <= 2


def test_past_max_instances_and_the_queue_bound_a_call_hears_too_many_requests(fn):
    fn.deploy("narrow", "import time\ndef handle(event, context):\n    time.sleep(event)\n"
                        "    return event\n", max_instances=1, queue_limit=1)
    fn.invoke("narrow", "0")  # its one instance, up

    def call(_):
        try:
            return fn.invoke("narrow", "2").ok
        except FunctionError as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(call, range(4)))
    refused = [o for o in outcomes if isinstance(o, FunctionError)]
    assert outcomes.count(True) == 2, outcomes  # one ran, one waited for it
    assert len(refused) == 2 and all(
        o.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "too many requests" in str(o)
        for o in refused), refused
    status, _, body = post("/function/narrow", b"0")
    assert status == 200  # the bound is on what waits, not on the function


def test_an_instance_reaches_neither_the_engine_nor_its_own_root(fn):
    source = ("import os, socket\ndef handle(event, context):\n"
              "    found = {'uid': os.getuid()}\n"
              "    for host in ('engine-proxy', 'runner'):\n"
              "        try:\n            socket.create_connection((host, 2375), timeout=2)\n"
              "            found[host] = 'reached'\n"
              "        except OSError as exc:\n            found[host] = type(exc).__name__\n"
              "    try:\n        open('/etc/owned', 'w')\n        found['root'] = 'written'\n"
              "    except OSError:\n        found['root'] = 'read-only'\n"
              "    found['socket'] = any(os.path.exists(p) for p in "
              "('/var/run/docker.sock', '/run/docker.sock', '/engine/docker.sock'))\n"
              "    return found\n")
    fn.deploy("probe", source, timeout=30.0)  # a name the internal network cannot resolve
    found = json.loads(fn.invoke("probe", "").result)
    assert found["uid"] != 0
    assert found["engine-proxy"] != "reached" and found["runner"] != "reached"
    assert found["root"] == "read-only" and found["socket"] is False


def test_every_serverless_dashboard_query_returns_series(fn, testbed):
    fn.invoke("echo", '"for the dashboard"')
    testbed.sync_targets()
    assert_dashboards_answer("serverless")


@pytest.mark.parametrize("scenario, kinds", [
    ("serverless-kill-instance", ["kill", "kill"]),
    ("serverless-kill-runner", ["kill"]),
    ("serverless-pause-storage", ["pause"])])
def test_each_serverless_scenario_comes_out_valid(testbed, tmp_path, scenario, kinds):
    outcome = run_valid(f"{scenario}.yaml", tmp_path)
    assert [fault["kind"] for fault in outcome["faults"]] == kinds
    (check,) = outcome["checks"]
    assert (check["name"], check["outcome"]) == ("invocations", "valid"), check
    figures = check["figures"]
    if scenario == "serverless-pause-storage":  # failed with the reason, then recovered
        assert figures["sync_failed"] >= 1 and figures["sync_ok"] >= 10, figures
        assert all("StorageUnavailable" in e for e in figures["errors"]), figures
    else:  # every accepted invocation completed, some after the kill cut them short
        assert figures["async_completed"] == figures["async_accepted"] > 0, figures
    assert testbed.nemesis.active() == [], "a fault outlived its scenario"


def results(client: FunctionsClient, ids: list[str]) -> list:
    """Each invocation's outcome, once every one has one."""
    replies = [client.result(i) for i in ids]
    return replies if all(r.done for r in replies) else []


def test_async_invocations_each_complete_once_with_the_right_result(fn):
    ids = [fn.invoke_async("fib", json.dumps({"n": n})) for n in range(10, 20)]
    status, _, body = post("/async-function/fib", b'{"n": 20}')
    assert status == 202
    replies = eventually(lambda: results(fn, [*ids, body["id"]]), timeout=120,
                         what="every async invocation done")
    assert [json.loads(r.result)["fib"] for r in replies] == [
        55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765]
    assert all(r.ok and r.attempts == 1 for r in replies)
    with pytest.raises(FunctionError) as raised:
        fn.invoke_async("nope", "")
    assert raised.value.code is grpc.StatusCode.NOT_FOUND


def test_functions_and_accepted_invocations_survive_the_runners_kill(fn, testbed):
    """Async invocations running when the runner is killed are tried again after its
    restart; each ends with one outcome. Then `clean` removes what a killed runner left."""
    fn.invoke("echo", '"before"')
    fn.deploy("nap", "import time\ndef handle(event, context):\n    time.sleep(2)\n"
                     "    return event\n", max_instances=2)
    ids = [fn.invoke_async("nap", str(n)) for n in range(4)]
    eventually(lambda: any(fn.result(i).attempts for i in ids), timeout=60,
               what="an async invocation running")
    runner = testbed.machine("runner-1")
    runner.kill()
    assert instances(testbed)  # a killed runner leaves its instances running
    runner.start()
    try:
        testbed.wait_healthy(testbed.lab, timeout=120)
    except Exception as exc:
        raise AssertionError(f"{exc}; the runner's log:\n{runner.logs(tail=40)}") from None
    client = FunctionsClient(runner_channel(testbed))
    eventually(lambda: client.invoke("echo", '"after"').ok, timeout=60,
               what="echo answers after the runner's restart")
    assert {"echo", "fib", "counter", "wordcount"} <= {f.function.name for f in client.list()}
    replies = eventually(lambda: results(client, ids), timeout=120,
                         what="the accepted invocations done after the restart")
    assert [json.loads(r.result) for r in replies] == [0, 1, 2, 3]
    assert any(r.attempts > 1 for r in replies)  # cut short by the kill, tried again
    runner.kill()
    assert instances(testbed)
    report = testbed.clean()
    assert not report.leftovers
    assert not [m for m in testbed.machines() if m.info.lab == "serverless"]
