"""The KV gRPC service: validates, logs durably, then applies and answers.

Writes are serialized under one lock so the log order is the apply order;
a write is acknowledged only after its record is fsync'd.
"""

from __future__ import annotations

import threading

import grpc
from prometheus_client import Gauge, Histogram

from nodes.common.metrics import LATENCY_BUCKETS
from nodes.common.role import NodeContext, RoleError, RoleNode
from nodes.kv.store import KVError, KVStore, decode_records
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
        self._wal = WriteAheadLog(ctx.data_dir / "kv.wal",
                                  on_fsync=fsync_seconds.observe)
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
        return {"keys": str(len(self._store)), "version": str(self._store.version),
                "value_bytes": str(self._store.value_bytes)}

    def Put(self, request, context):
        with self._lock:
            try:
                record = self._store.prepare_put(request.key, request.value)
            except KVError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            self._wal.append(record)
            self._store.apply(record)
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
            self._wal.append(record)
            self._store.apply(record)
        return kv_pb2.DeleteReply(existed=True)

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
            self._wal.replace(records)
            self._store = KVStore(max_value_bytes=self._store.max_value_bytes)
            for record in records:
                self._store.apply(record)

    def close(self) -> None:
        with self._lock:
            self._wal.close()
