"""nodes/common/logs.py: one JSON object per line, filtered by level."""

import io
import json
import threading

from nodes.common.logs import EventLog


def lines_of(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_each_event_is_one_json_line_with_the_contract_fields():
    stream = io.StringIO()
    log = EventLog("kv-1", "kv", stream=stream)
    log.info("node_started", grpc_port=50051)
    log.error("rpc_internal_error", method="/distlab.kv.KV/Get", error=ValueError("x"))
    first, second = lines_of(stream)
    assert {"ts", "level", "node", "role", "event"} <= set(first)
    assert (first["node"], first["role"], first["event"], first["level"]) == (
        "kv-1", "kv", "node_started", "info")
    assert first["grpc_port"] == 50051
    assert isinstance(first["ts"], float)
    assert second["level"] == "error" and second["error"] == "x"  # non-JSON values as str


def test_multiline_field_stays_on_one_line():
    stream = io.StringIO()
    EventLog("kv-1", "kv", stream=stream).warning("odd", detail="a\nb")
    (record,) = lines_of(stream)
    assert record["detail"] == "a\nb"


def test_level_threshold():
    stream = io.StringIO()
    log = EventLog("kv-1", "kv", level="warning", stream=stream)
    log.debug("a")
    log.info("b")
    log.warning("c")
    log.error("d")
    assert [r["event"] for r in lines_of(stream)] == ["c", "d"]
    stream = io.StringIO()
    log = EventLog("kv-1", "kv", level="debug", stream=stream)
    log.debug("a")
    assert [r["event"] for r in lines_of(stream)] == ["a"]


def test_concurrent_writers_do_not_interleave_lines():
    stream = io.StringIO()
    log = EventLog("kv-1", "kv", stream=stream)

    def write(n: int) -> None:
        for i in range(200):
            log.info("tick", writer=n, i=i, padding="x" * 100)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines_of(stream)) == 800
