"""distlab/history.py: a history file is whole whatever writes it at once, a bad one is
refused with the line that is wrong, and a history is bounded."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from distlab.history import OK, History, HistoryFull, HistoryUnreadable, Op


def history_of(writer: int, count: int) -> History:
    return History.of_ops(Op(writer, "write", {"n": n, "pad": "x" * 200}, n, n + 0.5, OK)
                          for n in range(count))


def write_many(path: str, writer: int, rounds: int) -> None:
    for _ in range(rounds):
        history_of(writer, 300).write(Path(path))


def test_two_processes_writing_one_history_at_once_leave_one_whole_file(tmp_path):
    path = tmp_path / "history.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=write_many, args=(str(path), writer, 20))
               for writer in (1, 2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    ops = list(History.read(path))
    assert len(ops) == 300 and len({op.process for op in ops}) == 1  # one writer's, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.jsonl",
                                                         "history.jsonl.lock"]  # no temp left


def test_a_written_history_reads_back_the_same(tmp_path):
    history = history_of(1, 5)
    history.write(tmp_path / "h.jsonl")
    assert list(History.read(tmp_path / "h.jsonl")) == sorted(history, key=lambda o: o.invoke)


def test_a_history_past_its_bound_refuses_more_operations():
    history = History(max_ops=3)
    for n in range(3):
        history.add(Op(0, "read", {}, n, n, OK))
    with pytest.raises(HistoryFull, match="already holds 3 operations"):
        history.add(Op(0, "read", {}, 9, 9, OK))
    assert len(history) == 3


def test_a_file_past_the_bound_or_with_a_bad_line_is_refused_saying_why(tmp_path):
    path = tmp_path / "h.jsonl"
    history_of(1, 5).write(path)
    with pytest.raises(HistoryUnreadable, match="more than 4 operations"):
        History.read(path, max_ops=4)
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"process": 1, "op": "write"})  # fields missing
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HistoryUnreadable, match="line 3 is not an operation"):
        History.read(path)
