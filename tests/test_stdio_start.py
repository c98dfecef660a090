"""``mcpd --stdio`` start-up, in real processes: what is imported before the first answer, the
reactor `mcpd.cli.install_stdio_reactor` installs (TLS still there, on first use), and answers
written straight to stdout keeping their order when the pipe fills."""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import FIXTURE_PACK, PYTHON, StdioProcess, daemon_env
from tests.http_harness import LATEST_LEGACY
from tests.tls_certs import make_tls_files

# Runs mcpd's command as the ``mcpd`` script does, and writes the names in sys.modules to the
# file named first as the first answer is written.
FIRST_ANSWER_MODULES = textwrap.dedent(
    """
    import json, sys
    out = sys.argv.pop(1)
    from mcpd.cli import main
    from mcpd.transport import stdio
    send = stdio.StdioProtocol.send
    def first(self, message):
        if not hasattr(stdio, "_seen"):
            stdio._seen = True
            with open(out, "w") as f:
                json.dump(sorted(sys.modules), f)
        send(self, message)
    stdio.StdioProtocol.send = first
    sys.exit(main())
    """
)

# Not for a --stdio start-up, before its first answer: the HTTP stack, the TLS libraries (the
# reactor's listenSSL/connectSSL), the JSON Schema validators (first call), what Twisted imports
# only for http.cookiejar.
NOT_BEFORE_THE_FIRST_ANSWER = (
    "twisted.web",
    "klein",
    "werkzeug",
    "prometheus_client",
    "treq",
    "mcpd.web",
    "mcpd.transport.streamable",
    "mcpd.transport.legacy_sse",
    "mcpd.transport.websocket",
    "mcpd.transport.tls",
    "mcpd.security.layer",
    "OpenSSL",
    "cryptography",
    "service_identity",
    "twisted.internet.ssl",
    "jsonschema",
    "fastjsonschema",
    "http.client",
    "urllib.request",
    "email",
)


def initialize(request_id: int = 1) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {"protocolVersion": LATEST_LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }


def blob_call(request_id: int, size: int) -> dict[str, object]:
    """tools/call of the fixture pack's ``tests.blob``: ``size`` x's back."""
    params = {"name": "tests.blob", "arguments": {"size": size}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


class StartImportsTests(SynchronousTestCase):
    """What a --stdio start-up imports before it first answers."""

    def test_no_http_tls_or_validators_before_the_first_answer(self) -> None:
        workdir = Path(self.mktemp())
        modules = workdir / "modules.json"
        # The default toolsets (with their SQL store, opened in the background) and a pack.
        server = StdioProcess(
            [PYTHON, "-c", FIRST_ANSWER_MODULES, str(modules.absolute()), "--stdio", "--tool-pack", FIXTURE_PACK],
            workdir,
        )
        self.addCleanup(server.kill)
        server.send(initialize())
        answer = server.receive()
        self.assertEqual(answer["result"]["protocolVersion"], LATEST_LEGACY)
        loaded = set(json.loads(modules.read_text()))
        found = sorted(
            name
            for name in loaded
            if any(name == top or name.startswith(top + ".") for top in NOT_BEFORE_THE_FIRST_ANSWER)
        )
        self.assertEqual(found, [])
        # It goes on serving as before: the list, and a call.
        server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        server.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        self.assertIn("tests.blob", {tool["name"] for tool in server.receive()["result"]["tools"]})
        server.send(blob_call(3, 5))
        self.assertEqual(server.receive()["result"]["content"][0]["text"], "xxxxx")
        server.close_stdin()
        self.assertEqual(server.wait(), 0)


# The reactor of a --stdio start-up still serves and connects over TLS (listenSSL through an
# ``ssl:`` endpoint, connectSSL verifying the server), and http.cookiejar still works whole.
TLS_AFTER_STDIO_REACTOR = textwrap.dedent(
    """
    import sys
    ca, endpoint = sys.argv[1], sys.argv[2]
    from mcpd.cli import install_stdio_reactor
    install_stdio_reactor()
    assert "OpenSSL" not in sys.modules, "pyOpenSSL imported with the reactor"
    from twisted.internet import reactor, ssl
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.interfaces import IReactorSSL
    from twisted.internet.protocol import ClientFactory, Factory, Protocol
    assert IReactorSSL.providedBy(reactor)

    class Echo(Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

    heard = []

    class Client(Protocol):
        def connectionMade(self):
            self.transport.write(b"over tls")
        def dataReceived(self, data):
            heard.append(data)
            self.transport.loseConnection()
            reactor.stop()

    def listening(port):
        trust = ssl.Certificate.loadPEM(open(ca, "rb").read())
        reactor.connectSSL(
            "127.0.0.1", port.getHost().port, ClientFactory.forProtocol(Client),
            ssl.optionsForClientTLS("localhost", trustRoot=trust),
        )

    serverFromString(reactor, endpoint).listen(Factory.forProtocol(Echo)).addCallbacks(
        listening, lambda f: (print(f), reactor.stop())
    )
    reactor.callLater(30, reactor.stop)
    reactor.run()
    assert heard == [b"over tls"], heard
    from http.cookiejar import CookieJar
    import http.cookiejar
    assert len(CookieJar()) == 0 and http.cookiejar.DefaultCookiePolicy
    print("ok")
    """
)


class StdioReactorTests(SynchronousTestCase):
    """`mcpd.cli.install_stdio_reactor`: no TLS libraries at start-up, TLS when asked for."""

    def test_tls_on_first_use(self) -> None:
        files = make_tls_files(Path(self.mktemp()).absolute())
        workdir = Path(self.mktemp())
        workdir.mkdir()
        done = subprocess.run(
            [PYTHON, "-c", TLS_AFTER_STDIO_REACTOR, str(files.ca), files.endpoint(0)],
            cwd=workdir,
            env=daemon_env(workdir),
            capture_output=True,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stdout.strip()), (0, b"ok"), done.stderr.decode()[-2000:])


class StdoutOrderTests(SynchronousTestCase):
    """Answers go to stdout at once when nothing waits before them, else behind what does."""

    def test_many_answers_through_a_full_pipe_stay_in_order(self) -> None:
        workdir = Path(self.mktemp())
        server = StdioProcess(
            [PYTHON, "-m", "mcpd", "--stdio", "--toolsets", "server", "--tool-pack", FIXTURE_PACK], workdir
        )
        self.addCleanup(server.kill)
        server.send(initialize())
        server.receive()
        server.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        # About 1 MB of answers to requests written while none is read for a second: the pipe
        # (64 KiB) fills, lines are cut where it took them, the rest waits in the transport
        # (which then stops reading stdin until stdout drains).
        count = 2000
        lines = b"".join(json.dumps(blob_call(i, 400)).encode() + b"\n" for i in range(count))
        stdin = server.process.stdin
        assert stdin is not None

        def write() -> None:
            stdin.write(lines)
            stdin.flush()

        writer = threading.Thread(target=write)
        writer.start()
        self.addCleanup(writer.join, 60)
        time.sleep(1)
        answers = [server.receive(timeout=30) for _ in range(count)]
        self.assertEqual([answer["id"] for answer in answers], list(range(count)))
        self.assertEqual({answer["result"]["content"][0]["text"] for answer in answers}, {"x" * 400})
        server.close_stdin()
        self.assertEqual(server.wait(), 0)
