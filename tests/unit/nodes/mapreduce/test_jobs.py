"""nodes/mapreduce/jobs.py: job modules in isolation, splits on line ends, partitions, outputs."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.mapreduce.jobs import (
    InputError,
    JobError,
    builtin_source,
    check_name,
    inside,
    load_job,
    read_output,
    read_split,
    run_map,
    run_reduce,
    run_sequential,
    split_inputs,
    stable_hash,
)


def test_the_stable_hash_is_fnv1a_and_the_same_in_every_process():
    assert stable_hash("") == 0x811C9DC5 & 0x7FFFFFFF
    assert stable_hash("a") == 0xE40C292C & 0x7FFFFFFF  # FNV-1a 32 test vector


def test_a_job_module_is_loaded_in_isolation():
    one = load_job("X = 1\ndef map(k, v): return []\ndef reduce(k, vs): return X", "job-1", {})
    two = load_job("X = 2\ndef map(k, v): return []\ndef reduce(k, vs): return X", "job-2", {})
    assert (one.reduce("k", []), two.reduce("k", [])) == (1, 2)
    assert one.__name__ not in sys.modules and two.__name__ not in sys.modules


@pytest.mark.parametrize("source, says", [
    ("import no_such_module_anywhere", "does not import: ModuleNotFoundError"),
    ("def map(:", "does not import: SyntaxError"),
    ("raise SystemExit(3)", "does not import: SystemExit"),
    ("def map(k, v): return []", "no reduce"),
])
def test_a_module_that_does_not_import_is_the_job_s_fault(source, says):
    with pytest.raises(JobError, match=says):
        load_job(source, "job-1", {})


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "x" * 65])
def test_names_that_leave_their_directory_are_refused(name):
    with pytest.raises(InputError):
        check_name(name, "job")
    with pytest.raises(InputError):
        builtin_source(name)


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "sub/../../secret"])
def test_inputs_outside_the_input_directory_are_refused(tmp_path, name):
    (tmp_path / "in").mkdir()
    (tmp_path / "secret").write_text("x\n")
    with pytest.raises(InputError):
        split_inputs(tmp_path / "in", [name], 100)


def test_a_symlink_out_of_the_input_directory_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "secret").write_text("x\n")
    (tmp_path / "in" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(InputError, match="outside"):
        split_inputs(tmp_path / "in", ["link"], 100)


@pytest.mark.parametrize(("name", "problem"), [
    ("a\0b", "NUL byte"), ("x" * 256, "too long"), ("d/" * 600 + "f", "too long")])
def test_a_name_no_file_system_takes_is_refused_before_any_file_is_touched(tmp_path, name,
                                                                          problem):
    with pytest.raises(InputError, match=problem):
        inside(tmp_path, name)


def test_missing_and_empty_inputs_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="does not exist"):
        split_inputs(tmp_path, ["nope.txt"], 100)
    with pytest.raises(InputError, match="empty"):
        split_inputs(tmp_path, ["empty.txt"], 100)


@given(lines=st.lists(st.text(alphabet="ab \u00e9", max_size=30), max_size=40),
       split_bytes=st.integers(1, 50), block_bytes=st.integers(1, 70))
def test_splits_cover_the_input_once_and_end_on_line_ends(tmp_path_factory, lines, split_bytes,
                                                          block_bytes):
    directory = tmp_path_factory.mktemp("in")
    data = "".join(line + "\n" for line in lines).encode()
    (directory / "f.txt").write_bytes(data or b"\n")
    data = data or b"\n"
    splits = split_inputs(directory, ["f.txt"], split_bytes)
    assert splits[0].start == 0 and splits[-1].end == len(data)
    assert all(a.end == b.start for a, b in zip(splits, splits[1:], strict=False))
    assert all(data[s.end - 1:s.end] == b"\n" for s in splits)
    read = [(offset, line) for s in splits for offset, line in read_split(directory, s,
                                                                            block_bytes)]
    assert [line for _, line in read] == (lines or [""])
    assert all(data[offset:].startswith(line.encode() + b"\n") for offset, line in read)


def test_the_last_line_without_a_newline_is_read_too(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"one\ntwo")
    split = split_inputs(tmp_path, ["f.txt"], 100)[0]
    assert list(read_split(tmp_path, split, block_bytes=3)) == [(0, "one"), (4, "two")]


def test_a_partition_file_is_one_json_array_of_keys_and_values_in_key_order(tmp_path):
    (tmp_path / "in.txt").write_text("b a b\nc a\n")
    module = load_job("def map(k, v):\n    for w in v.split(): yield w, 1\n"
                      "def reduce(k, vs): return sum(vs)\n"
                      "def partition(k, r): return 0", "job-1", {})
    split = split_inputs(tmp_path, ["in.txt"], 100)[0]
    counters = run_map(module, tmp_path, split, 2, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "part-0").read_bytes()) == [
        ["a", [1, 1]], ["b", [1, 1]], ["c", [1]]]
    assert json.loads((tmp_path / "out" / "part-1").read_bytes()) == []
    assert counters["map_records_in"] == 2 and counters["map_records_out"] == 5


def test_map_output_json_cannot_carry_is_the_job_s_fault(tmp_path):
    (tmp_path / "in.txt").write_text("a\n")
    module = load_job("def map(k, v): yield v, object()\ndef reduce(k, vs): return 1",
                      "job-1", {})
    split = split_inputs(tmp_path, ["in.txt"], 100)[0]
    with pytest.raises(JobError, match="map output of partition 0 is not JSON: TypeError"):
        run_map(module, tmp_path, split, 1, tmp_path / "out")


def test_map_raising_on_one_record_names_the_record(tmp_path):
    (tmp_path / "in.txt").write_text("fine\nbad line\n")
    module = load_job("def map(k, v):\n    if 'bad' in v: raise ValueError('no')\n    yield v, 1\n"
                      "def reduce(k, vs): return len(vs)", "job-1", {})
    split = split_inputs(tmp_path, ["in.txt"], 100)[0]
    with pytest.raises(JobError, match=r"in.txt at byte 5 \('bad line'\): ValueError: no"):
        run_map(module, tmp_path, split, 2, tmp_path / "out")


@pytest.mark.parametrize("job", ["wordcount", "indexer"])
def test_map_then_reduce_equals_the_sequential_run(tmp_path, job):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("the cat sat\non the mat\n" * 20)
    (inputs / "b.txt").write_text("a dog, the dog!\n" * 7)
    module = load_job(builtin_source(job), "job-1", {})
    splits = split_inputs(inputs, ["."], 64)
    reducers = 3
    for m, split in enumerate(splits):
        run_map(module, inputs, split, reducers, tmp_path / f"m{m}")
    outputs = []
    for r in range(reducers):
        parts = [(tmp_path / f"m{m}" / f"part-{r}").read_bytes() for m in range(len(splits))]
        outputs.append(tmp_path / f"mr-out-{r}")
        run_reduce(module, parts, outputs[-1], r)
    assert read_output(outputs) == run_sequential(module, inputs, ["."])


def test_a_partition_function_that_raises_is_the_job_s_fault(tmp_path):
    (tmp_path / "in.txt").write_text("a\n")
    module = load_job("def map(k, v): yield v, 1\ndef reduce(k, vs): return 1\n"
                      "def partition(k, r): return 1 // 0", "job-1", {})
    split = split_inputs(tmp_path, ["in.txt"], 100)[0]
    with pytest.raises(JobError, match="partition raised on key 'a': ZeroDivisionError"):
        run_map(module, tmp_path, split, 2, tmp_path / "out")


def test_keys_that_are_not_strings_become_strings_and_meet_their_string_twins(tmp_path):
    (tmp_path / "in.txt").write_text("x\n")
    module = load_job("def map(k, v):\n    yield 1, 'a'\n    yield '1', 'b'\n    yield 2, 'c'\n"
                      "def reduce(k, vs): return ''.join(sorted(vs))", "job-1", {})
    split = split_inputs(tmp_path, ["in.txt"], 100)[0]
    counters = run_map(module, tmp_path, split, 1, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "part-0").read_bytes()) == [
        ["1", ["a", "b"]], ["2", ["c"]]]
    assert counters["map_records_out"] == 3
    assert run_sequential(module, tmp_path, ["in.txt"]) == {"1": "ab", "2": "c"}
