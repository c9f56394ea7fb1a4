"""Synthetic work for the server-architecture benchmark (the Bank service's Work call).

`check_work` turns a WorkRequest into seconds of CPU and of waiting, or
refuses it; `burn_cpu` spends real CPU time in the calling thread (hashing,
measured with `time.thread_time`, so time spent waiting for the GIL or the
CPU does not count). It hashes small blocks, which hashlib does holding the
GIL, like pure-Python work: the threads of one process take turns, and only
the process architecture burns CPU on several cores at once. The servicers
wait the I/O part themselves: `time.sleep` holds a server thread,
`asyncio.sleep` frees the event loop, which is what the architectures differ in.
"""

from __future__ import annotations

import hashlib
import time

import grpc

from nodes.app.bank import BankError
from nodes.rpc import bank_pb2

MAX_CPU_MILLIS = 1000
MAX_IO_MILLIS = 10_000
_BLOCK = b"distlab!" * 8  # 64 bytes: hashlib releases the GIL only for 2 KiB and more
_ROUNDS = 256  # updates between clock reads: tens of microseconds


def check_work(request: bank_pb2.WorkRequest) -> tuple[float, float]:
    """(cpu seconds, io seconds) the request asks for; BankError when out of bounds."""
    if request.cpu_millis > MAX_CPU_MILLIS:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"cpu_millis {request.cpu_millis} is above the cap of {MAX_CPU_MILLIS}")
    if request.io_millis > MAX_IO_MILLIS:
        raise BankError(grpc.StatusCode.INVALID_ARGUMENT,
                        f"io_millis {request.io_millis} is above the cap of {MAX_IO_MILLIS}")
    return request.cpu_millis / 1000, request.io_millis / 1000


def burn_cpu(seconds: float) -> float:
    """Hash until this thread has used `seconds` of CPU; return the CPU time it used."""
    started = time.thread_time()
    digest = hashlib.sha256()
    while time.thread_time() - started < seconds:
        for _ in range(_ROUNDS):
            digest.update(_BLOCK)
    return time.thread_time() - started
