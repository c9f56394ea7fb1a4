"""The sending side of a bidirectional gRPC stream driven from one thread, as both live
migrations use it (a vm's Transfer, a data replica's MigrateIn).

Requests go through a small outbox, so a slow receiver slows the sender rather than
piling messages up; a thread reads the replies into an event queue, and the end of the
reply stream, or its error, becomes one more event: the exception `failure(code,
message)` makes, raised by `next_event` in the driver's thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc

OUTBOX_MESSAGES = 4
_END = object()


class OutboundStream:
    def __init__(self, failure: Callable[[grpc.StatusCode, str], Exception],
                 peer: str) -> None:
        self._failure = failure
        self._peer = peer
        self._events: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue(maxsize=OUTBOX_MESSAGES)
        self.call = None

    def open(self, method: Callable[..., Iterator], timeout: float):
        """Start the call (`method`: a stream-stream stub method); its call object."""
        self.call = method(self._requests(), timeout=timeout)
        threading.Thread(target=self._read_replies, args=(self.call,), name="stream-replies",
                         daemon=True).start()
        return self.call

    def send(self, message, check: Callable[[], object]) -> None:
        """Queue `message`, running `check` (the driver's handling of what came back)
        while the outbox is full."""
        while True:
            check()
            try:
                self._outbox.put(message, timeout=0.1)
                return
            except queue.Full:
                continue

    def next_event(self, wait: float = 0.0):
        """The next reply within `wait` seconds, or None; raises when the stream ended."""
        try:
            event = self._events.get(timeout=wait) if wait > 0 else self._events.get_nowait()
        except queue.Empty:
            return None
        if isinstance(event, Exception):
            raise event
        return event

    def wait_until(self, moment: float, check: Callable[[], object]) -> None:
        """Sleep until `moment` (a rate limit), running `check` meanwhile."""
        while (left := moment - time.monotonic()) > 0:
            check()
            time.sleep(min(left, 0.05))

    def close(self) -> None:
        """End the request stream. What is still queued is not needed: a transfer that
        succeeded had its last message answered, one that failed is cancelled."""
        while True:
            try:
                self._outbox.get_nowait()
            except queue.Empty:
                break
        self._outbox.put_nowait(_END)

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()

    def _requests(self) -> Iterator:
        while True:
            item = self._outbox.get()
            if item is _END:
                return
            yield item

    def _read_replies(self, replies) -> None:
        try:
            for reply in replies:
                self._events.put(reply)
            self._events.put(self._failure(grpc.StatusCode.UNAVAILABLE,
                                           "the destination ended the transfer"))
        except grpc.RpcError as exc:
            self._events.put(self._failure(exc.code(), f"destination {self._peer}: "
                                                       f"{exc.details()}"))
