"""A minimal asyncio WebSocket client for the benchmarks: handshake, masked text frames out,
text frames in. Small on purpose, so that thousands of idle clients cost the load generator
little and the figures measure the server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Any


class WSClosed(Exception):
    """The server closed the connection (or sent something this client does not read)."""


class WSClient:
    """One connection: `connect`, then `send` / `receive` JSON-RPC messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str = "/ws", subprotocol: str = "mcp", headers: dict[str, str] | None = None
    ) -> WSClient:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {subprotocol}\r\n{extra}\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            raise WSClosed(f"handshake refused: {head.splitlines()[0]!r}")
        return cls(reader, writer)

    def send_frame(self, payload: bytes, opcode: int = 1) -> None:
        """One masked frame (clients must mask, RFC 6455 §5.3)."""
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if length < 4096 else _mask_big(payload, mask)
        self.writer.write(head + mask + masked)

    async def send(self, message: Any) -> None:
        self.send_frame(json.dumps(message).encode())
        await self.writer.drain()

    async def receive(self) -> Any:
        """The next text message as JSON (pings are answered, pongs skipped)."""
        return json.loads(await self.receive_text())

    async def receive_text(self) -> bytes:
        """The payload of the next text message, as sent."""
        while True:
            first, second = await self.reader.readexactly(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
            if opcode == 0x1:
                return payload
            if opcode == 0x9:
                self.send_frame(payload, opcode=0xA)
                continue
            if opcode == 0x8:
                raise WSClosed(f"closed by the server: {payload[:2].hex()} {payload[2:]!r}")

    def close(self) -> None:
        self.writer.close()


def _mask_big(payload: bytes, mask: bytes) -> bytes:
    whole = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(len(payload), "big")
