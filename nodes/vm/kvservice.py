"""The vm's KV as the lab's `distlab.kv.KV` service, so the shared register workload and its
linearizability checker run against a vm (through its switch) as they do against kv.

The keys and values live in the vm's image (nodes.vm.guest.PageKV): they move with it,
and a call held during a migration's blackout is answered by whichever process owns the
vm then. A vm's KV keeps a key once written: Delete is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from nodes.rpc import kv_pb2, kv_pb2_grpc

MAX_LIST = 1000


class VmKV(kv_pb2_grpc.KVServicer):
    def __init__(self, call: Callable) -> None:
        self._call = call  # VmNode._call: held while paused, refused once moved

    def Put(self, request, context):
        key = _key(request.key, context)
        self._call(context, lambda vm: vm.kv().put(key, request.value))
        return kv_pb2.PutReply()

    def Get(self, request, context):
        key = _key(request.key, context)
        value = self._call(context, lambda vm: vm.kv().get(key))
        if value is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no key {request.key[:60]!r}")
        return kv_pb2.GetReply(value=value)

    def Delete(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "a vm's KV keeps a key once written: "
                      "Delete is not supported")

    def List(self, request, context):
        prefix = request.prefix.encode()
        limit = min(request.limit or MAX_LIST, MAX_LIST)
        keys = sorted(k for k in self._call(context, lambda vm: vm.kv().keys())
                      if k.startswith(prefix))
        return kv_pb2.ListReply(keys=[k.decode(errors="replace") for k in keys[:limit]],
                                truncated=len(keys) > limit)


def _key(key: str, context) -> bytes:
    if not key:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the key must not be empty")
    return key.encode()
