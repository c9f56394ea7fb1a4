"""What a job is and how its tasks run: job modules, input splits, partitions, outputs.

The master uses `builtin_source`, `check_name` and `split_inputs` to accept a
job; the worker uses `load_job`, `run_map` and `run_reduce` to run its tasks;
`run_sequential` is the single-process reference run the tests (and the host's
`output` check) compare a job's output with. Touches only the files and
directories it is given.

A job module defines `map(key, value)` yielding (key, value) pairs and
`reduce(key, values)` returning one value; optionally `combine(key, values)`
(run on a map task's output per key, returning one value of map's kind) and
`partition(key, reducers)`. It finds its parameters in a module-level
`params` dict. Keys are strings, values anything JSON can carry. map is called
once per line of input: key the input file's name, value the line.

A job module is imported in isolation: a fresh module object named after the
job, never put in sys.modules nor found on sys.path, so two jobs defining the
same names never meet and a worker never imports a job by accident.
"""

from __future__ import annotations

import functools
import json
import os
import re
import types
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from nodes.common.usercode import UserCodeError, describe, import_source
from nodes.mapreduce.scheduler import Split

BUILTIN_DIR = Path(__file__).with_name("builtin")
BUILTINS = ("wordcount", "indexer", "grep", "sort")
MAX_MODULE_BYTES = 1024 * 1024
# An input's name: Linux's NAME_MAX per part, and a whole well under PATH_MAX (4096) once the
# input directory is put in front.
MAX_PART_BYTES = 255
MAX_NAME_BYTES = 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: A map task's partition file: one JSON array of [key, [value, ...]] pairs, in key order.
#: One document per file, not one per record: encoding and decoding run in C over the
#: whole partition instead of once per record in Python.
PARTITION_FILE = "part-{partition}"
#: How much of a split is read at a time.
READ_BYTES = 4 * 1024 * 1024


class JobError(Exception):
    """The job's own fault (its module, its input, its map or reduce): the job fails with
    this message, which names the record when there is one."""


class InputError(ValueError):
    """Inputs that cannot make a job: missing, empty, or outside the input directory."""


def check_name(name: str, what: str) -> str:
    """A name that stays in its directory: no separators, no `..`, no leading dot."""
    if not NAME.match(name):
        raise InputError(f"{what} {name[:80]!r} is not a plain name (letters, digits, "
                         f"'.', '_', '-'; at most 64; not starting with '.')")
    return name


def builtin_source(name: str) -> str:
    check_name(name, "job")
    if name not in BUILTINS:
        raise InputError(f"no built-in job {name!r}; built-ins: {', '.join(BUILTINS)}")
    return (BUILTIN_DIR / f"{name}.py").read_text()


@functools.lru_cache(maxsize=1 << 16)
def stable_hash(key: str) -> int:
    """FNV-1a (32 bits) of the key's UTF-8: the same in every process, unlike hash().
    Memoised: a worker meets the same keys in every map task of a job, and FNV in Python
    costs a few microseconds a key."""
    value = 0x811C9DC5
    for byte in key.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value & 0x7FFFFFFF


def inside(input_dir: Path, name: str) -> Path:
    """`name` under `input_dir`, refusing anything that leaves it (absolute, `..`, links) and
    anything no file system takes as a name (a NUL byte, a part or a path too long), so
    such a name is the caller's mistake rather than an OSError later."""
    if "\0" in name:
        raise InputError(f"input {name[:200]!r} contains a NUL byte")
    if len(name.encode()) > MAX_NAME_BYTES or any(len(part.encode()) > MAX_PART_BYTES
                                                  for part in Path(name).parts):
        raise InputError(f"input {name[:200]!r} is too long: at most {MAX_NAME_BYTES} "
                         f"bytes, {MAX_PART_BYTES} per directory or file name")
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise InputError(f"input {name[:200]!r} must be a path relative to the input "
                         f"directory, without '..'")
    root = input_dir.resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise InputError(f"input {name[:200]!r} leads outside the input directory")
    return path


def resolve_input(input_dir: Path, name: str) -> Path:
    """An existing input `name` under `input_dir` (see `inside`)."""
    path = inside(input_dir, name)
    if not path.exists():
        raise InputError(f"input {name[:200]!r} does not exist")
    return path


def split_inputs(input_dir: Path, names: Iterable[str], split_bytes: int) -> list[Split]:
    """Cut the inputs into splits of about `split_bytes`, each ending at a line's end."""
    files: list[Path] = []
    for name in names:
        path = resolve_input(input_dir, name)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and not p.name.startswith(".")))
        else:
            files.append(path)
    if not files:
        raise InputError("no input files given")
    root = input_dir.resolve()
    splits = []
    for path in files:
        size = path.stat().st_size
        relative = str(path.resolve().relative_to(root))
        with open(path, "rb") as handle:
            start = 0
            while start < size:
                end = min(start + split_bytes, size)
                if end < size:
                    handle.seek(end - 1)
                    rest = handle.readline()  # to the end of the line at the cut
                    end = end - 1 + len(rest)
                splits.append(Split(relative, start, end))
                start = end
    if not splits:
        raise InputError(f"the input is empty ({len(files)} file(s), 0 bytes)")
    return splits


def load_job(source: str, job_id: str, params: dict[str, str]) -> types.ModuleType:
    """The job's module, imported in isolation; JobError when it does not import."""
    try:
        module = import_source(source, f"distlab_mr_job_{re.sub(r'[^A-Za-z0-9_]', '_', job_id)}",
                               f"<job {job_id}>", preset={"params": dict(params)})
    except UserCodeError as exc:
        raise JobError(f"the job module does not import: {exc}") from None
    module.params = {**getattr(module, "params", {}), **params}
    for name in ("map", "reduce"):
        if not callable(getattr(module, name, None)):
            raise JobError(f"the job module defines no {name}(key, ...) function")
    return module


def read_split(input_dir: Path, split: Split,
               block_bytes: int = READ_BYTES) -> Iterator[tuple[int, str]]:
    """The split's lines (without their newline) with the byte offset each starts at.
    Read in blocks: a readline per record cost more than the record's map."""
    path = resolve_input(input_dir, split.path)
    offset = split.start
    carry = b""
    with open(path, "rb") as handle:
        handle.seek(split.start)
        left = split.end - split.start
        while left > 0:
            block = handle.read(min(block_bytes, left))
            if not block:
                break
            left -= len(block)
            lines = (carry + block).split(b"\n")
            carry = lines.pop()  # the part after the block's last newline
            for raw in lines:
                yield offset, raw.decode("utf-8", errors="replace")
                offset += len(raw) + 1
    if carry:  # the file's last line, without a newline
        yield offset, carry.decode("utf-8", errors="replace")


def _partitioner(module: types.ModuleType, reducers: int) -> Callable[[str], int]:
    custom = getattr(module, "partition", None)
    if callable(custom):
        return lambda key: int(custom(key, reducers)) % reducers
    return lambda key: stable_hash(key) % reducers


def run_map(module: types.ModuleType, input_dir: Path, split: Split, reducers: int,
            out_dir: Path) -> dict[str, int]:
    """Run map over one split and write R partition files into `out_dir`; the counters."""
    combine = getattr(module, "combine", None)
    # Grouped by key first, partitioned per distinct key at the end: hashing every pair
    # (Python-level FNV) cost three times what map itself did.
    grouped, records_in, bytes_in = _map_grouped(module, input_dir, split)
    records_out = sum(map(len, grouped.values()))
    partition_of = _partitioner(module, reducers)
    buckets: list[list[tuple[str, list[Any]]]] = [[] for _ in range(reducers)]
    for key in sorted(grouped):
        values = grouped[key]
        if callable(combine):
            try:
                values = [combine(key, values)]
            except Exception as exc:
                raise JobError(f"combine raised on key {key[:80]!r}: "
                               f"{describe(exc)}") from None
        try:
            bucket = buckets[partition_of(key)]
        except Exception as exc:
            raise JobError(f"partition raised on key {key[:80]!r}: {describe(exc)}") from None
        bucket.append((key, values))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for index, pairs in enumerate(buckets):
        try:
            data = json.dumps(pairs, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise JobError(f"map output of partition {index} is not JSON: "
                           f"{describe(exc)}") from None
        written += len(data)
        _write_whole(out_dir / PARTITION_FILE.format(partition=index), data)
    return {"map_records_in": records_in, "map_bytes_in": bytes_in,
            "map_records_out": records_out, "map_bytes_out": written}


def _map_grouped(module: types.ModuleType, input_dir: Path,
                 split: Split) -> tuple[defaultdict[str, list[Any]], int, int]:
    """map over a split, its pairs grouped by key; and the records and bytes read. The
    loop over map's pairs is the hottest in the framework: one dict lookup and one append
    a pair, nothing more (keys are made strings afterwards)."""
    grouped: defaultdict[Any, list[Any]] = defaultdict(list)
    records_in = bytes_in = 0
    job_map = module.map
    for offset, line in read_split(input_dir, split):
        records_in += 1
        bytes_in += len(line) + 1
        try:
            for key, value in job_map(split.path, line):
                grouped[key].append(value)
        except Exception as exc:
            raise JobError(f"map raised on record {split.path} at byte {offset} "
                           f"({line[:80]!r}): {describe(exc)}") from None
    return _string_keys(grouped), records_in, bytes_in


def _string_keys(grouped: defaultdict[Any, list[Any]]) -> defaultdict[str, list[Any]]:
    """`grouped` with every key a string (keys 1 and "1" are one key then)."""
    if all(type(key) is str for key in grouped):
        return grouped
    merged: defaultdict[str, list[Any]] = defaultdict(list)
    for key, values in grouped.items():
        merged[str(key)].extend(values)
    return merged


def _write_whole(path: Path, data: bytes) -> None:
    """Write then rename, so a partition file is whole or absent. Not fsync'd: map output
    is re-creatable. A worker that crashes starts a new incarnation with an empty
    intermediate directory and the master runs its map tasks again (the paper's rule), so
    durability would buy nothing and an fsync per partition costs a disk flush each."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _write_synced(path: Path, data: bytes) -> None:
    """Write, fsync, then rename: the file is whole or absent, and stays after a crash."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def run_reduce(module: types.ModuleType, partitions: Iterable[bytes], output: Path,
               task: int) -> dict[str, int]:
    """Merge the fetched partitions, reduce key by key in key order, and write `output`
    (fsync'd; the master renames it into place when it accepts this attempt)."""
    grouped: defaultdict[str, list[Any]] = defaultdict(list)
    records_in = 0
    for data in partitions:
        for key, values in json.loads(data) if data else ():
            grouped[key].extend(values)
            records_in += len(values)
    lines = []
    job_reduce = module.reduce
    for key in sorted(grouped):
        try:
            value = job_reduce(key, grouped[key])
        except Exception as exc:
            raise JobError(f"reduce raised on key {key[:80]!r} in partition {task}: "
                           f"{describe(exc)}") from None
        lines.append(f"{key} {value}\n")
    data = "".join(lines).encode()
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_synced(output, data)
    return {"reduce_records_in": records_in, "reduce_keys": len(lines),
            "reduce_bytes_out": len(data)}


def run_sequential(module: types.ModuleType, input_dir: Path,
                   names: Iterable[str]) -> dict[str, str]:
    """The job run in one process without the framework: the reference output, key -> value.
    Its map loop is the map tasks' own (one file at a time), so a benchmark against it
    measures the framework, not a slower loop."""
    grouped: defaultdict[str, list[Any]] = defaultdict(list)
    for split in split_inputs(input_dir, names, split_bytes=1 << 62):
        pairs, _, _ = _map_grouped(module, input_dir, split)
        if not grouped:
            grouped = pairs
            continue
        for key, values in pairs.items():
            grouped[key].extend(values)
    return {key: str(module.reduce(key, values)) for key, values in sorted(grouped.items())}


def read_output(paths: Iterable[Path]) -> dict[str, str]:
    """A job's output files as key -> value (keys are unique across partitions)."""
    result: dict[str, str] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in result:
                raise ValueError(f"key {key!r} appears twice in the output")
            result[key] = value
    return result
