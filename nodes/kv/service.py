"""The KV gRPC service: validates, logs durably, then applies and answers.

Called by gRPC clients and the node bootstrap; touches only its write-ahead
log (DATA_DIR/<name>/kv.wal). Writes are serialized under one lock so the
log order is the apply order; a write is acknowledged only after its record
is fsync'd, and applied only then, so memory never holds an unacknowledged
write. The log is rewritten as a snapshot once the bytes appended since the
last one reach KV_WAL_COMPACT_BYTES and the size of the values stored (the
rewrite costs the whole state, so its cost per write stays constant).

A write the log could not take is answered UNAVAILABLE: "not applied: ..."
when the log certainly does not hold it, "may or may not be applied: ..."
when it might (see nodes.common.durable for the policy). After a failed
fsync the node refuses every write until it is restarted, serves reads of
what it acknowledged, says why in Status (`wal_stopped`), and reports
NOT_SERVING in grpc.health, so the switch and health-checking clients send
their writes elsewhere instead of to a node that can only refuse them.
"""

from __future__ import annotations

import threading

import grpc
from prometheus_client import Gauge, Histogram

from nodes.common.durable import AppendFailed
from nodes.common.metrics import LATENCY_BUCKETS
from nodes.common.role import NodeContext, RoleError, RoleNode
from nodes.kv.store import KVError, KVStore, Record, decode_records
from nodes.kv.wal import WriteAheadLog
from nodes.rpc import kv_pb2, kv_pb2_grpc

SERVICE_NAME = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name
LIST_LIMIT = 1000


class KVNode(RoleNode, kv_pb2_grpc.KVServicer):
    service_names = (SERVICE_NAME,)

    def __init__(self, ctx: NodeContext) -> None:
        self._log = ctx.log
        self._store = KVStore(max_value_bytes=ctx.config["KV_MAX_VALUE_BYTES"])
        fsync_seconds = Histogram("distlab_kv_wal_fsync_seconds",
                                  "Time to fsync one write-ahead-log append.",
                                  buckets=LATENCY_BUCKETS, registry=ctx.registry)
        self._compact_bytes = ctx.config["KV_WAL_COMPACT_BYTES"]
        self._wal = WriteAheadLog(ctx.data_dir / "kv.wal", on_fsync=fsync_seconds.observe,
                                  log=ctx.log, on_stop=ctx.set_not_serving)
        self._lock = threading.Lock()
        records = self._wal.replay()
        for record in records:
            self._store.apply(record)
        Gauge("distlab_kv_keys", "Keys stored on this node.",
              registry=ctx.registry).set_function(lambda: len(self._store))
        ctx.log.info("kv_recovered", records=len(records), keys=len(self._store),
                     version=self._store.version)

    def register(self, server: grpc.Server) -> None:
        kv_pb2_grpc.add_KVServicer_to_server(self, server)

    def status(self) -> dict[str, str]:
        state = {"keys": str(len(self._store)), "version": str(self._store.version),
                 "value_bytes": str(self._store.value_bytes)}
        if self._wal.stopped_because:
            state["wal_stopped"] = self._wal.stopped_because
        return state

    def Put(self, request, context):
        with self._lock:
            try:
                record = self._store.prepare_put(request.key, request.value)
            except KVError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            self._log_and_apply(record, context)
        return kv_pb2.PutReply(version=record.version)

    def Get(self, request, context):
        try:
            found = self._store.get(request.key)
        except KVError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no key {request.key!r}")
        value, version = found
        return kv_pb2.GetReply(value=value, version=version)

    def Delete(self, request, context):
        with self._lock:
            try:
                record = self._store.prepare_delete(request.key)
            except KVError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if record is None:
                return kv_pb2.DeleteReply(existed=False)
            self._log_and_apply(record, context)
        return kv_pb2.DeleteReply(existed=True)

    def _log_and_apply(self, record: Record, context) -> None:
        """Make `record` durable, apply it, compact when due; write lock held."""
        try:
            self._wal.append(record)
        except AppendFailed as exc:
            outcome = "may or may not be applied" if exc.maybe_written else "not applied"
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{outcome}: {exc}")
        self._store.apply(record)
        if self._wal.bytes_since_snapshot >= max(self._compact_bytes, self._store.value_bytes):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the log as the current state. A failure costs nothing: the record that
        triggered it is already durable, and the old log stays in use."""
        before = self._wal.bytes_since_snapshot
        try:
            self._wal.replace(self._store.records())
        except AppendFailed as exc:
            self._log.warning("wal_compaction_failed", problem=str(exc))
            return
        self._log.debug("wal_compacted", appended_bytes=before,
                        snapshot_bytes=self._wal.size, keys=len(self._store))

    def List(self, request, context):
        limit = request.limit or LIST_LIMIT
        if limit > LIST_LIMIT:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"limit {limit} is above the cap of {LIST_LIMIT}")
        with self._lock:
            keys, truncated = self._store.keys(request.prefix, limit)
        return kv_pb2.ListReply(keys=keys, truncated=truncated)

    def snapshot(self) -> bytes:
        with self._lock:
            return b"".join(record.encode() for record in self._store.records())

    def restore(self, state: bytes) -> None:
        records, intact = decode_records(state)
        if intact != len(state):
            raise RoleError(f"snapshot is corrupt after byte {intact} of {len(state)}")
        with self._lock:
            try:
                self._wal.replace(records)
            except AppendFailed as exc:
                raise RoleError(f"snapshot not restored, the state is unchanged: {exc}") from None
            self._store = KVStore(max_value_bytes=self._store.max_value_bytes)
            for record in records:
                self._store.apply(record)

    def close(self) -> None:
        with self._lock:
            self._wal.close()
