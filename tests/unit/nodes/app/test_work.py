"""Synthetic Work: bounded requests, and CPU time that is really spent."""

import time

import grpc
import pytest

from nodes.app.bank import BankError
from nodes.app.work import MAX_CPU_MILLIS, MAX_IO_MILLIS, burn_cpu, check_work
from nodes.rpc import bank_pb2


def test_check_work_converts_to_seconds_within_the_caps():
    assert check_work(bank_pb2.WorkRequest(cpu_millis=250, io_millis=1500)) == (0.25, 1.5)
    assert check_work(bank_pb2.WorkRequest(cpu_millis=MAX_CPU_MILLIS,
                                           io_millis=MAX_IO_MILLIS)) == (1.0, 10.0)
    assert check_work(bank_pb2.WorkRequest()) == (0, 0)


@pytest.mark.parametrize("request_, fragment", [
    (bank_pb2.WorkRequest(cpu_millis=MAX_CPU_MILLIS + 1), "cpu_millis 1001 is above the cap"),
    (bank_pb2.WorkRequest(io_millis=MAX_IO_MILLIS + 1), "io_millis 10001 is above the cap"),
])
def test_work_beyond_the_caps_is_invalid_argument(request_, fragment):
    with pytest.raises(BankError) as caught:
        check_work(request_)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.message


def test_burn_cpu_spends_at_least_the_cpu_time_asked_in_this_thread():
    before = time.thread_time()
    spent = burn_cpu(0.05)
    assert spent >= 0.05
    assert time.thread_time() - before >= 0.05
    assert burn_cpu(0) >= 0
