"""The vm's KV as the lab's `distlab.kv.KV` service, so the shared register workload and its
linearizability checker run against a vm (through its switch) as they do against kv.

Two guests serve it. A kv guest is the kv role's store (nodes.vm.keyimage): the
same Put/Get/Delete/List, versions and limits, moved by dirty keys. A vm of pages
keeps a small KV in its image (nodes.vm.guest.PageKV): it moves with the pages, it
has no versions, and it keeps a key once written (Delete is refused). Either way a
call held during a migration's blackout is answered by whichever process owns the
vm then.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from nodes.rpc import kv_pb2, kv_pb2_grpc
from nodes.vm.machine import VirtualMachine

MAX_LIST = 1000


class VmKV(kv_pb2_grpc.KVServicer):
    def __init__(self, call: Callable) -> None:
        self._call = call  # VmNode._call: held while paused, refused once moved

    def Put(self, request, context):
        key = _key(request.key, context)
        version = self._call(context, lambda vm: _put(vm, key, request.value))
        return kv_pb2.PutReply(version=version)

    def Get(self, request, context):
        key = _key(request.key, context)
        found = self._call(context, lambda vm: _get(vm, key))
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no key {request.key[:60]!r}")
        value, version = found
        return kv_pb2.GetReply(value=value, version=version)

    def Delete(self, request, context):
        key = _key(request.key, context)
        existed = self._call(context, lambda vm: _delete(vm, key, context))
        return kv_pb2.DeleteReply(existed=existed)

    def List(self, request, context):
        limit = request.limit or MAX_LIST
        if limit > MAX_LIST:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"limit {limit} is above the cap of {MAX_LIST}")
        keys, truncated = self._call(context, lambda vm: _keys(vm, request.prefix, limit))
        return kv_pb2.ListReply(keys=keys, truncated=truncated)


def _key(key: str, context) -> str:
    if not key:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the key must not be empty")
    return key


def _put(vm: VirtualMachine, key: str, value: bytes) -> int:
    store = vm.store()
    if store is not None:
        return store.put(key, value)
    vm.kv().put(key.encode(), value)
    return 0


def _get(vm: VirtualMachine, key: str) -> tuple[bytes, int] | None:
    store = vm.store()
    if store is not None:
        return store.get(key)
    value = vm.kv().get(key.encode())
    return None if value is None else (value, 0)


def _delete(vm: VirtualMachine, key: str, context) -> bool:
    store = vm.store()
    if store is None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "a vm's KV of pages keeps a key once "
                      "written: Delete is supported by kv guests only")
    return store.delete(key)


def _keys(vm: VirtualMachine, prefix: str, limit: int) -> tuple[list[str], bool]:
    store = vm.store()
    if store is not None:
        return store.keys(prefix, limit)
    keys = sorted(k.decode(errors="replace") for k in vm.kv().keys())
    matching = [k for k in keys if k.startswith(prefix)]
    return matching[:limit], len(matching) > limit
