# -*- test-case-name: tests.test_stdio -*-
"""MCP over stdio: newline-delimited JSON-RPC on stdin and stdout (basic/transports §stdio).

While the client does not read stdout, stdin is not read either; past ``max_write_buffer`` bytes
it has left unread, the client is given up on and the server stops (`mcpd.security.flow`). Once
the client closes stdout, answers are dropped and stdin is read to its end, which stops the server;
a last message left without its newline when stdin ends is answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.fdesc import writeToFD
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcpd.protocol.codec import encode
from mcpd.protocol.engine import Engine
from mcpd.protocol.errors import InvalidRequest
from mcpd.protocol.session import Session
from mcpd.protocol.vocabulary import Exchange
from mcpd.security.flow import OutputGuard, nothing_buffered
from mcpd.tools.api import Caller

log = Logger(namespace="mcpd.stdio")


@implementer(IHalfCloseableProtocol)
class StdioProtocol(Protocol):
    """Serves one client on a pair of pipes; stdout carries MCP messages and nothing else."""

    def __init__(
        self,
        engine: Engine,
        max_message_size: int,
        on_close: Callable[[], Any] | None = None,
        max_write_buffer: int = 8 * 1024 * 1024,
    ) -> None:
        self.engine = engine
        self.max_message_size = max_message_size
        self.max_write_buffer = max_write_buffer
        self.guard: OutputGuard | None = None
        self.on_close = on_close
        self.session = Session("stdio")
        # Messages that belong to no request (list changes, resource updates) are lines too.
        self.session.sink = self.send
        self.caller = Caller(name="local", peer="stdio", transport="stdio")
        # How many times the client's input was read: while it moves, the client is busy (the
        # SQL store opens once it stands still: mcpd.stores.opening).
        self.reads = 0
        self._buffer = b""
        self._discarding = False
        self._stdout_closed = False

    def connectionMade(self) -> None:
        transport: Any = self.transport  # StandardIO: a consumer too
        self.guard = OutputGuard(transport, self.max_write_buffer, self._unread)
        transport.registerProducer(self.guard, True)

    def _unread(self, unsent: int) -> None:
        log.error(
            "The client has left {unsent} bytes of stdout unread (over --max-write-buffer {limit}): stopping",
            unsent=unsent,
            limit=self.max_write_buffer,
        )
        self.session.close()
        # Nothing more will be written, and what is buffered will not drain: do not wait for it.
        self.connected = False
        if self.on_close is not None:
            self.on_close()

    def dataReceived(self, data: bytes) -> None:
        self.reads += 1
        lines = (self._buffer + data).split(b"\n")
        buffer = lines.pop()  # what follows the last newline: the start of a line, or nothing
        for line in lines:
            if self._discarding:
                self._discarding = False
                continue
            self._line(line)
        if len(buffer) > self.max_message_size and not self._discarding:
            self._discarding = True
            self._too_large()
        self._buffer = b"" if self._discarding else buffer

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line:
            return
        if len(line) > self.max_message_size:
            self._too_large()
            return
        exchange = Exchange(peer="stdio", caller=self.caller, session=self.session, notify=self.send)
        self.engine.handle_bytes(line, exchange).addCallbacks(self._reply, self._failed)

    def _too_large(self) -> None:
        log.warn("Discarding a message over {limit} bytes", limit=self.max_message_size)
        error = InvalidRequest(f"Invalid request: message exceeds the {self.max_message_size}-byte limit")
        exchange = Exchange(peer="stdio", caller=self.caller, session=self.session)
        self.send(self.engine.reject(exchange, None, error))

    def _reply(self, response: Any) -> None:
        if response is not None:
            self.send(response)

    def _failed(self, failure: Failure) -> None:
        log.failure("Serving a stdio message failed", failure)

    def send(self, message: Any) -> None:
        """Write one message as one line."""
        if self.transport is not None and not self.session.closed:
            line = encode(message) + b"\n"
            guard = self.guard
            if guard is not None and guard.blocked and not guard.admit(len(line)):
                return
            # StandardIO buffers each write and has the reactor watch stdout until it can write
            # it: two more epoll changes and a turn of the reactor per answer. With nothing
            # waiting before it, the line is written at once; what a full pipe does not take
            # goes to the transport, which sends it once the pipe drains.
            stdout = getattr(self.transport, "_writer", None)
            written = writeToFD(stdout.fd, line) if stdout is not None and nothing_buffered(stdout) else 0
            # Not an int: the client closed its end of stdout (EPIPE). Nobody will read this
            # line, and buffering it (with every later answer) would only fill the transport and
            # stop stdin being read: it is dropped, and the client's EOF on stdin ends the server.
            if isinstance(written, int) and written != len(line):
                self.transport.write(line[written:])

    def readConnectionLost(self) -> None:
        # basic/transports §stdio: messages are delimited by newlines, but a client that ends
        # stdin right after its last message, unterminated, has still ended it: it is answered.
        buffer, self._buffer = self._buffer, b""
        if not self._discarding:
            self._line(buffer)
        # basic/transports §stdio: the client closing stdin ends the server, once the answers
        # already written have reached stdout (a plain Protocol would have StandardIO drop them).
        self.session.close()
        if self._stdout_closed:
            self.connectionLost(Failure(ConnectionDone("stdin and stdout closed")))
        else:
            # StandardIO, the transport, is the one calling: it is set by now.
            assert self.transport is not None
            self.transport.loseConnection()  # flushes stdout, then connectionLost

    def writeConnectionLost(self) -> None:
        self._stdout_closed = True

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # basic/transports §stdio: the client closing stdin ends the server.
        self.connected = False
        self.session.close()
        if self.on_close is not None:
            self.on_close()
