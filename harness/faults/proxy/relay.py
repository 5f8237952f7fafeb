"""The fast path of a link with no toxic: a thread that moves bytes with ``splice(2)``.

While a direction of a connection has no toxic, the event loop stops reading its source socket
and a :class:`Relay` thread moves the bytes instead: ``poll`` for input, ``splice`` from the
source socket into a pipe, ``splice`` from the pipe into the destination socket. The bytes never
enter Python and a message costs three system calls and a few bytecodes, against an event-loop
iteration and a ``bytes`` copy on the asyncio path (``bench/bench_network.py`` measures both).

The thread returns when the loop asks (:meth:`Relay.stop`, which waits for it), at end of stream
or on a socket error; the link then takes over on the asyncio path, which handles every such case
exactly as before (docs/proxy.md, "Performance"). It never closes the sockets: the transports own
them, and the link stops its relays before any transport closes its socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading
from collections.abc import Callable

#: Linux has ``splice`` and ``eventfd``; elsewhere every link stays on the asyncio path.
AVAILABLE = hasattr(os, "splice") and hasattr(os, "eventfd")
PIPE_SIZE = 1024 * 1024  # bytes one splice may move (the pipe is resized to it when allowed)

#: Why the thread returned (:attr:`Relay.reason`).
STOPPED, EOF, READ_ERROR, WRITE_ERROR = "stopped", "eof", "read_error", "write_error"


class Relay:
    """A thread that moves bytes from socket ``src`` to socket ``dst`` (file descriptors, both
    non-blocking as asyncio leaves them: a blocking one could keep :meth:`stop` waiting).

    ``exited(relay)`` is called from the thread when it returns on its own (end of stream or a
    socket error), not when :meth:`stop` asked it to.
    """

    def __init__(self, src: int, dst: int, exited: Callable[[Relay], None], name: str) -> None:
        self.src = src
        self.dst = dst
        self.reason = ""
        self._exited = exited
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a lower pipe-max-size keeps the default 64 KiB
            fcntl.fcntl(self._pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False

    def start(self) -> None:
        """Start the thread; on failure (no thread to be had) close and re-raise."""
        try:
            self._thread.start()
        except RuntimeError:
            self._close()
            raise

    def stop(self) -> bytes:
        """Make the thread return, wait for it, and return what it read but did not write."""
        if not self._closed:
            os.eventfd_write(self._wake, 1)
        return self.finish()

    def finish(self) -> bytes:
        """Wait for the thread; return the bytes left in the pipe (in order) and close it."""
        if self._closed:
            return b""
        if self._thread.ident is not None:
            self._thread.join()
        left = bytearray()
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._pipe_r, PIPE_SIZE):
                left += data
        self._close()
        return bytes(left)

    def _close(self) -> None:
        self._closed = True
        for fd in (self._wake, self._pipe_r, self._pipe_w):
            os.close(fd)

    def _run(self) -> None:
        self.reason = self._move()
        if self.reason != STOPPED:
            self._exited(self)

    def _move(self) -> str:
        src, dst, wake, pipe_r, pipe_w = self.src, self.dst, self._wake, self._pipe_r, self._pipe_w
        splice, flags = os.splice, os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        readable = select.poll()
        readable.register(src, select.POLLIN)
        readable.register(wake, select.POLLIN)
        writable = select.poll()
        writable.register(dst, select.POLLOUT)
        writable.register(wake, select.POLLIN)
        while True:
            ready = readable.poll()
            if len(ready) > 1 or ready[0][0] == wake:
                return STOPPED  # the pipe is empty here: every read was written
            try:
                left = splice(src, pipe_w, PIPE_SIZE, flags=flags)
            except BlockingIOError:
                continue
            except OSError:
                return READ_ERROR
            if left == 0:
                return EOF
            while left:
                try:
                    left -= splice(pipe_r, dst, left, flags=flags)
                except BlockingIOError:
                    if any(fd == wake for fd, _ in writable.poll()):
                        return STOPPED  # the rest stays in the pipe: stop() hands it over
                except OSError:
                    return WRITE_ERROR
