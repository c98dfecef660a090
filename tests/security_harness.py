"""Real daemons with API keys and TLS for the security tests: the test base, raw HTTP requests and replies."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.daemon import Daemon, DaemonTestMixin, free_port

MODERN = "2026-07-28"


KEYS = "root:root-key\nalice:alice-key:read\nrate:rate-key\nrate2:rate2-key\n"


PACK = ["--tool-pack", "tests.security_pack"]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (key file, certificate file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def call_body(tool: str, request_id: int = 1) -> bytes:
    params = {
        "name": tool,
        "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}},
    }
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()


def call_headers(tool: str, **extra: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
        **extra,
    }


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


class Scheme:
    """How to reach one listener of the daemon: plain HTTP or TLS."""

    def __init__(self, name: str, port: int, host: str = "127.0.0.1") -> None:
        self.name, self.port, self.host = name, port, host
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        self.context.set_alpn_protocols(["http/1.1"])

    def connection(self) -> http.client.HTTPConnection:
        if self.name == "tls":
            return http.client.HTTPSConnection(self.host, self.port, timeout=10, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def socket(self) -> socket.socket:
        raw = socket.create_connection((self.host, self.port), timeout=10)
        return self.context.wrap_socket(raw) if self.name == "tls" else raw

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Reply:
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def call(self, tool: str, path: str = "/mcp", **headers: str) -> Reply:
        return self.request("POST", path, call_body(tool), call_headers(tool, **headers))


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        return data


class SecurityTestCase(DaemonTestMixin, TestCase):
    timeout = 60

    def start(self, *args: str, listen_tls: bool = True, host_args: list[str] | None = None) -> list[Scheme]:
        """A daemon with the security pack and keys, on a plain and a TLS port."""
        keys = self.workdir / "keys.txt"
        if not keys.exists():
            keys.write_text(KEYS, encoding="utf-8")
        # Runs after the daemon stops, before its trace is validated: refusals never reach the
        # engine, so a trace without messages is expected here.
        self.addCleanup(self._drop_empty_trace)
        tls_port = free_port()
        key_path, cert_path = make_certificate(self.workdir)
        listen = ["--listen", f"ssl:{tls_port}:privateKey={key_path}:certKey={cert_path}:interface=127.0.0.1"]
        self.daemon: Daemon = self.start_daemon(*PACK, "--api-key-file", str(keys), *listen, *args)
        assert self.daemon.port is not None
        self.wait_tls(tls_port)
        return [Scheme("plain", self.daemon.port), Scheme("tls", tls_port)]

    def wait_tls(self, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.fail(f"TLS port {port} did not answer")

    def executions(self) -> list[str]:
        events = self.daemon.events
        lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
        return [line for line in lines if line.startswith(("executed", "started"))]

    def assertRefused(self, reply: Reply, status: int, words: str) -> dict[str, Any]:
        self.assertEqual(reply.status, status, reply.body)
        self.assertEqual(reply.headers.get("content-type"), "application/json")
        body = reply.json()
        self.assertIn(words, body["error"])
        self.assertEqual(self.executions(), [])
        return body

    def _drop_empty_trace(self) -> None:
        trace = self.workdir / "daemon.trace.jsonl"
        if trace.exists() and '"out"' not in trace.read_text(encoding="utf-8"):
            trace.unlink()

    def audit(self) -> list[dict[str, Any]]:
        lines = self.daemon.log("stdout").splitlines()
        return [json.loads(line.split(" audit ", 1)[1]) for line in lines if " audit {" in line]


class Raw:
    """A response read off a socket."""

    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1]) if lines[0].startswith(("HTTP/1.1 ", "HTTP/1.0 ")) else 0
        self.headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        self.raw = data
        if self.headers.get("transfer-encoding") == "chunked":
            self.body = _dechunk(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if length == 0:
            break
        body, data = body + data[:length], data[length + 2 :]
    return body


def exchange(scheme: Scheme, request: bytes) -> Raw:
    """Send ``request`` as it is on a new connection; read one response (to the end of its body,
    or until the server closes the connection)."""
    sock = scheme.socket()
    try:
        sock.sendall(request)
        sock.settimeout(10)
        data = b""
        while not _complete(data, head_only=request.startswith(b"HEAD ")):
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
        return Raw(data)
    finally:
        sock.close()


def _complete(data: bytes, head_only: bool) -> bool:
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        return False
    # RFC 9112 §6.3: the answer to a HEAD, a 1xx, 204 or 304 ends with its head.
    if head_only or head[9:13] in (b"101 ", b"204 ", b"304 "):
        return True
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if b"content-length" in fields:
        return len(body) >= int(fields[b"content-length"])
    if fields.get(b"transfer-encoding") == b"chunked":
        return body.startswith(b"0\r\n\r\n") or b"\r\n0\r\n\r\n" in body
    return False


def request_bytes(method: str, target: str, port: int, body: bytes = b"", **headers: str) -> bytes:
    fields = {"Host": f"127.0.0.1:{port}", "Connection": "close", **headers}
    if body or method == "POST":
        fields["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


MCP_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": MODERN,
    "Mcp-Method": "tools/call",
    "Mcp-Name": "sec.record",
}


KEY = {"Authorization": "Bearer root-key"}


class RouteTestCase(SecurityTestCase):
    def start_plain(self, *args: str) -> Scheme:
        """A daemon with the security pack and no keys, on one plain port."""
        assert self.workdir.exists()  # first: an empty trace is dropped before traces are checked
        self.addCleanup(self._drop_empty_trace)
        self.daemon = self.start_daemon("--tool-pack", "tests.security_pack", *args)
        assert self.daemon.port is not None
        return Scheme("plain", self.daemon.port)

    def send(self, scheme: Scheme, method: str, target: str, body: bytes = b"", **headers: str) -> Raw:
        return exchange(scheme, request_bytes(method, target, scheme.port, body, **headers))

    def assertJSONError(self, reply: Raw, status: int, words: str, head: bool = False) -> dict[str, Any]:
        self.assertEqual(reply.status, status, reply.raw[:500])
        self.assertEqual(reply.headers.get("content-type"), "application/json", reply.raw[:500])
        if head:  # the answer to a HEAD has no body
            self.assertEqual(reply.body, b"")
            return {}
        body = reply.json()
        self.assertIn(words, body["error"])
        self.assertEqual(self.executions(), [])
        return body
