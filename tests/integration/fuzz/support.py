"""What every fuzz module shares: the methods to fuzz, the inputs, the raw call and the checks.

A service's methods come from its compiled descriptor (`methods_of`), so a
method added to a .proto is fuzzed without touching a test. `payloads(kind,
method)` gives Hypothesis strategies of request bodies as raw bytes, one per
input kind (KINDS): random bytes, valid messages with extreme values,
mutated valid messages, another message type's bytes, and valid messages
with unknown fields appended; `huge_string_bodies` and `many_repeated_bodies`
give the size-boundary bodies. `call_raw` sends a body with a generic
(serializer-less) call of the method's cardinality and `Outcome.check`
asserts what a caller would notice: a status from the allowed set, details
without a traceback or Python internals, and an answer within the deadline.
"""

from __future__ import annotations

import math
import os
import re
import struct
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning

from nodes.rpc import (
    bank_pb2,
    chain_pb2,
    chord_pb2,
    control_pb2,
    kv_pb2,
    mapreduce_pb2,
    peer_pb2,
    tracker_pb2,
    vm_pb2,
)

KINDS = ("random", "extreme", "mutated", "wrong_type", "unknown_fields")
CALL_TIMEOUT = 5.0
# Time past the deadline a call may take to come back before it counts as a hang.
HANG_MARGIN = 2.0
# Codes a client may get for a body it made up: a clean refusal of one kind or another.
# Never UNKNOWN or INTERNAL (the server did not know what to do with it), never
# DEADLINE_EXCEEDED (it hung), never CANCELLED (nobody cancelled).
CLEAN_CODES = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.ABORTED})
# What details must never show: a traceback, an exception's repr or a Python type name.
INTERNAL_TEXT = re.compile(r"Traceback|Exception|File \"|<class |object at 0x|"
                           r"\b[A-Z][A-Za-z]*Error\b|\b(dict|list|tuple|NoneType|str|bytes|int)\b"
                           r"\(|'NoneType'")
ALL_MESSAGES = tuple(
    message for module in (bank_pb2, chain_pb2, chord_pb2, control_pb2, kv_pb2, mapreduce_pb2,
                           peer_pb2, tracker_pb2, vm_pb2)
    for message in module.DESCRIPTOR.message_types_by_name.values())

INT_EXTREMES = {
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, -1, 0, 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, -1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, -1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, -1, 0, 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, -1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, -1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1, -1, 0, 1, 2, 3, 99),
    FieldDescriptor.TYPE_UINT64: (0, 1, 2**63, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 1, 2**31, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
}
FLOAT_EXTREMES = (math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e308, -1e308, 5e-324)


@dataclass(frozen=True)
class Method:
    path: str  # "/pkg.Service/Name"
    input: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    def __repr__(self) -> str:  # what Hypothesis prints for a falsifying example
        return self.path


def methods_of(*services: ServiceDescriptor, skip: Iterable[str] = ()) -> list[Method]:
    skipped = set(skip)
    return [Method(f"/{service.full_name}/{method.name}", method.input_type,
                   method.client_streaming, method.server_streaming)
            for service in services for method in service.methods
            if method.name not in skipped]


def message_class(descriptor: Descriptor):
    return message_factory.GetMessageClass(descriptor)


# -- inputs ------------------------------------------------------------------------------------

def _scalar(field: FieldDescriptor, extreme: bool) -> st.SearchStrategy:
    kind = field.type
    if kind in INT_EXTREMES:
        extremes = st.sampled_from(INT_EXTREMES[kind])
        if extreme:
            return extremes
        low, high = min(INT_EXTREMES[kind]), max(INT_EXTREMES[kind])
        return st.one_of(extremes, st.integers(-5, 100).filter(lambda v: low <= v <= high),
                         st.integers(low, high))
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        floats = st.sampled_from(FLOAT_EXTREMES)
        if kind == FieldDescriptor.TYPE_FLOAT:
            floats = floats.map(lambda v: struct.unpack("f", struct.pack("f", v))[0]
                                if abs(v) < 3e38 or not math.isfinite(v) else math.inf)
        return floats if extreme else st.one_of(floats, st.floats(allow_nan=False, width=32))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        # Valid UTF-8 only (proto3 refuses others on serialization): odd characters,
        # separators and the empty string.
        text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
        tricky = st.sampled_from(("", " ", "/", "..", "\x00", "a" * 300, "é" * 70, "%s%n",
                                  "0" * 40, "127.0.0.1:1", "*", "/distlab.kv.KV/*"))
        return tricky if extreme else st.one_of(tricky, text)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for field type {kind}")  # pragma: no cover


def messages(descriptor: Descriptor, *, extreme: bool = False,
             depth: int = 3) -> st.SearchStrategy:
    """Messages of `descriptor` with some fields set (each to any value of its type)."""
    cls = message_class(descriptor)
    field_values = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth == 0:
                continue
            value = messages(field.message_type, extreme=extreme, depth=depth - 1)
        else:
            value = _scalar(field, extreme)
        if field.is_repeated:
            value = st.lists(value, max_size=4)
        field_values[field.name] = value

    @st.composite
    def build(draw):
        message = cls()
        if not field_values:
            return message
        names = draw(st.sets(st.sampled_from(sorted(field_values))))
        for name in sorted(names):
            value = draw(field_values[name])
            _assign(message, descriptor.fields_by_name[name], value)
        return message

    return build()


def _assign(message, field: FieldDescriptor, value) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for entry in value:
            key_field = field.message_type.fields_by_name["key"]
            if key_field.type != FieldDescriptor.TYPE_MESSAGE:
                target[entry.key] = entry.value
        return
    if field.is_repeated:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
        return
    setattr(message, field.name, value)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def _unknown_field(draw) -> bytes:
    """One well-formed field with a number no distlab message uses."""
    number = draw(st.integers(100, 2**29 - 1))
    wire = draw(st.sampled_from((0, 1, 2, 5)))
    key = _encode_varint(number << 3 | wire)
    if wire == 0:
        return key + _encode_varint(draw(st.integers(0, 2**64 - 1)))
    if wire == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    data = draw(st.binary(max_size=64))
    return key + _encode_varint(len(data)) + data


@st.composite
def _mutate(draw, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(("flip", "truncate", "insert", "duplicate", "delete")))
        if operation == "insert" or not data:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del data[draw(st.integers(0, len(data) - 1)):]
        elif operation == "duplicate":
            data += bytes(data)
        else:
            at = draw(st.integers(0, len(data) - 1))
            del data[at:at + draw(st.integers(1, 4))]
    return bytes(data)


def payloads(kind: str, method: Method) -> st.SearchStrategy[bytes]:
    """Request bodies of input kind `kind` for `method`."""
    valid = messages(method.input).map(lambda m: m.SerializeToString())
    if kind == "random":
        return st.binary(max_size=256)
    if kind == "extreme":
        return messages(method.input, extreme=True).map(lambda m: m.SerializeToString())
    if kind == "mutated":
        return valid.flatmap(_mutate)
    if kind == "wrong_type":
        others = [m for m in ALL_MESSAGES if m.full_name != method.input.full_name]
        return st.sampled_from(others).flatmap(
            lambda other: messages(other)).map(lambda m: m.SerializeToString())
    if kind == "unknown_fields":
        return st.tuples(valid, st.lists(_unknown_field(), min_size=1, max_size=4)).map(
            lambda parts: parts[0] + b"".join(parts[1]))
    raise ValueError(f"unknown input kind {kind!r}")


def _string_paths(descriptor: Descriptor, prefix: tuple = (), depth: int = 2):
    """Every (path of fields) to a string or bytes field, nested messages included."""
    for field in descriptor.fields:
        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            yield (*prefix, field)
        elif (field.type == FieldDescriptor.TYPE_MESSAGE and depth > 0
              and not field.message_type.GetOptions().map_entry):
            yield from _string_paths(field.message_type, (*prefix, field), depth - 1)


def _with_value(descriptor: Descriptor, path: Sequence[FieldDescriptor], size: int) -> bytes:
    message = message_class(descriptor)()
    target = message
    for field in path[:-1]:
        target = (getattr(target, field.name).add()
                  if field.is_repeated
                  else getattr(target, field.name))
    last = path[-1]
    value = "x" * size if last.type == FieldDescriptor.TYPE_STRING else b"x" * size
    if last.is_repeated:
        getattr(target, last.name).append(value)
    else:
        setattr(target, last.name, value)
    return message.SerializeToString()


def huge_string_bodies(method: Method, limit: int) -> list[tuple[str, bytes]]:
    """For each string or bytes field: a body just under the message-size `limit`, and one
    just past it."""
    bodies = []
    for path in _string_paths(method.input):
        name = ".".join(field.name for field in path)
        under = _with_value(method.input, path, limit - 64)
        bodies.append((f"{name} just under the limit", under))
        bodies.append((f"{name} just past the limit", _with_value(
            method.input, path, limit - 64 + (limit + 1 - len(under)))))
    return bodies


def many_repeated_bodies(method: Method, limit: int) -> list[tuple[str, bytes]]:
    """For each repeated or map field: as many small elements as fit under `limit`."""
    bodies = []
    for field in method.input.fields:
        if not field.is_repeated:
            continue
        one = _repeated(method.input, field, 1).ByteSize()
        count = (limit - 64) // one
        message = _repeated(method.input, field, count)
        while message.ByteSize() > limit - 16:  # map keys grow with the count
            count = count * 9 // 10
            message = _repeated(method.input, field, count)
        bodies.append((f"{count} x {field.name}", message.SerializeToString()))
    return bodies


def _repeated(descriptor: Descriptor, field: FieldDescriptor, count: int):
    message = message_class(descriptor)()
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = _small(field.message_type.fields_by_name["value"])
        for i in range(count):
            target[f"k{i}"] = value
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        for _ in range(count):
            target.add()
    else:
        target.extend([_small(field)] * count)
    return message


def _small(field: FieldDescriptor):
    if field.type == FieldDescriptor.TYPE_STRING:
        return "k"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"v"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.0
    return 1


# -- calls and checks --------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    method: Method
    code: grpc.StatusCode
    details: str
    seconds: float
    timeout: float

    def check(self, allowed: frozenset[grpc.StatusCode] = CLEAN_CODES) -> None:
        """What a caller would notice: a clean status, clean details, no hang."""
        where = f"{self.method.path}: {self.code.name} {self.details!r}"
        assert self.code in allowed, f"status not in the allowed set: {where}"
        assert not INTERNAL_TEXT.search(self.details), f"internal text in details: {where}"
        assert self.seconds <= self.timeout + HANG_MARGIN, f"took {self.seconds:.1f} s: {where}"


def call_raw(channel: grpc.Channel, method: Method, body: bytes | Sequence[bytes], *,
             timeout: float = CALL_TIMEOUT, metadata: Sequence[tuple[str, str]] = ()) -> Outcome:
    """Send `body` (a list of bodies for a request stream) as the method's request, with no
    serializer: the server gets exactly these bytes."""
    bodies = [body] if isinstance(body, bytes) else list(body)
    started = time.monotonic()
    code, details = grpc.StatusCode.OK, ""
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(method.path)(iter(bodies), timeout=timeout,
                                                    metadata=metadata))
        elif method.client_streaming:
            channel.stream_unary(method.path)(iter(bodies), timeout=timeout, metadata=metadata)
        elif method.server_streaming:
            list(channel.unary_stream(method.path)(bodies[0], timeout=timeout,
                                                   metadata=metadata))
        else:
            channel.unary_unary(method.path)(bodies[0], timeout=timeout, metadata=metadata)
    except grpc.RpcError as error:
        code, details = error.code(), error.details() or ""
    return Outcome(method, code, details, time.monotonic() - started, timeout)


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the fuzz loop -----------------------------------------------------------------------------

# Examples per (target, input kind); FUZZ_EXAMPLES=2000 for a long hunt.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


@dataclass
class Target:
    """Methods reached through one channel, and what their callers may be told.

    `protected` methods need the lab credential: through a channel without it
    (`credentialed` False) each must be refused UNAUTHENTICATED, whatever the body.
    `allowed` widens the clean codes for a method whose normal answers include
    another (named by its short name, with the reason beside it in the module).
    `timeout` is each call's deadline, unless `timeouts` names another for the method
    (by its short name).
    """

    name: str
    channel: grpc.Channel
    methods: list[Method]
    credentialed: bool = True
    protected: frozenset[str] = frozenset()
    allowed: dict[str, frozenset[grpc.StatusCode]] | None = None
    timeout: float = CALL_TIMEOUT
    timeouts: dict[str, float] | None = None

    def deadline(self, method: Method) -> float:
        return (self.timeouts or {}).get(method.name, self.timeout)

    def check(self, outcome: Outcome) -> None:
        if not self.credentialed and outcome.method.path in self.protected:
            # gRPC refuses a body past the size limit before any handler runs.
            assert outcome.code in (grpc.StatusCode.UNAUTHENTICATED,
                                    grpc.StatusCode.RESOURCE_EXHAUSTED), (
                f"{self.name}: {outcome.method.path} without the credential answered "
                f"{outcome.code.name} {outcome.details!r}")
        outcome.check((self.allowed or {}).get(outcome.method.name, CLEAN_CODES))

    def __repr__(self) -> str:
        return self.name


def fuzz(target: Target, kind: str, *, examples: int = EXAMPLES, keep=None,
         after=None) -> Counter[str]:
    """Send `examples` bodies of input kind `kind` to `target`'s methods and check each answer;
    return how many answers had each code. `keep(method, body)` may turn a body down (an
    expensive one, say); `after()` runs after each call (to undo what a privileged call
    changed)."""
    codes: Counter[str] = Counter()

    @settings(max_examples=examples, database=None)
    @given(data=st.data())
    def run(data):
        method = data.draw(st.sampled_from(target.methods), label="method")
        if method.client_streaming:
            body = data.draw(st.lists(payloads(kind, method), min_size=1, max_size=3),
                             label="bodies")
            assume(keep is None or all(keep(method, b) for b in body))
        else:
            body = data.draw(payloads(kind, method), label="body")
            assume(keep is None or keep(method, body))
        try:
            outcome = call_raw(target.channel, method, body, timeout=target.deadline(method))
            codes[outcome.code.name] += 1
            target.check(outcome)
        finally:
            if after is not None:
                after()

    with warnings.catch_warnings():
        # The nodes run in this process, and their background threads (peer checks, Chord's
        # timers) use the `random` module while Hypothesis draws an example.
        warnings.simplefilter("ignore", HypothesisDeprecationWarning)
        run()
    print(f"{target.name} {kind}: {dict(codes)}")
    return codes


def boundary_bodies(method: Method, limit: int) -> list[tuple[str, bytes]]:
    return huge_string_bodies(method, limit) + many_repeated_bodies(method, limit)


def check_size_limit(target: Target, limit: int, *, methods: Sequence[Method] | None = None,
                     keep: Callable[[Method, bytes], bool] = lambda method, body: True,
                     after_call: Callable[[], None] = lambda: None) -> None:
    """Every method gets bodies just under and just past `limit`: each answer is clean, and
    each body past the limit is refused RESOURCE_EXHAUSTED (or, through a channel without
    the credential, UNAUTHENTICATED). `keep` leaves out bodies too costly to run."""
    refusals = {grpc.StatusCode.RESOURCE_EXHAUSTED}
    if not target.credentialed:
        refusals.add(grpc.StatusCode.UNAUTHENTICATED)
    for method in target.methods if methods is None else methods:
        for label, body in boundary_bodies(method, limit):
            if not keep(method, body):
                continue
            # A 64 KiB body needs more than a health Watch's short deadline to get there.
            outcome = call_raw(target.channel, method, body,
                               timeout=max(target.deadline(method), 1.0))
            after_call()
            target.check(outcome)
            if len(body) > limit:
                assert outcome.code in refusals, label
