"""contrib/nginx/mcpd.conf in front of a real mcpd, driven by the official SDK clients.

Debian's nginx-light runs the shipped file (its ports, upstream and certificate paths pointed at
the test's) terminating TLS for a daemon started with ``--trusted-proxy 127.0.0.1``. The clients
run in a network namespace (`tests.netns`), so they reach nginx from a non-loopback address:
Streamable HTTP (both eras) and HTTP+SSE with the Python SDK 2.x, WebSocket with the SDK 1.x
client. mcpd's audit records must name that address, never nginx's 127.0.0.1, also when the
client sends an X-Forwarded-For of its own.

Needs root (the namespace) and nginx-light: elsewhere it skips, under ``CI=true`` it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.daemon import FIXTURE_TOOLS, REPO_ROOT, SERVER_TOOLS, DaemonTestMixin, audit_records, free_port, port_answers
from tests.netns import ClientNetwork
from tests.tls_certs import make_tls_files
from tests.ws_client_env import REQUIREMENT, WSClientEnvError, ensure_ws_client

CONF = REPO_ROOT / "contrib" / "nginx" / "mcpd.conf"
NGINX = "/usr/sbin/nginx"
PROXY_CLIENT = REPO_ROOT / "tests" / "proxy_client_script.py"
WS_CLIENT = REPO_ROOT / "tests" / "ws_client_script.py"
CLIENT_TIMEOUT = 60.0

MAIN_CONF = """\
daemon off;
worker_processes 1;
user nobody nogroup;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/nginx-access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    include {dir}/mcpd.conf;
}}
"""


# One GET without following redirects: URL, CA file, an X-Forwarded-For to send (or "").
_FETCH = r"""
import http.client, json, ssl, sys, urllib.parse
url, ca, forwarded = sys.argv[1], sys.argv[2], sys.argv[3]
parts = urllib.parse.urlsplit(url)
if parts.scheme == "https":
    connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=ssl.create_default_context(cafile=ca), timeout=10)
else:
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
connection.request("GET", parts.path, headers={"X-Forwarded-For": forwarded} if forwarded else {})
response = connection.getresponse()
print(json.dumps({"status": response.status, "location": response.getheader("Location")}))
"""


def require_machine() -> None:
    why = None
    if os.geteuid() != 0:
        why = "the nginx test makes a network namespace: it needs root"
    elif not os.path.exists(NGINX):
        why = "no nginx: apt-get install nginx-light (tests/install-deps.sh)"
    elif shutil.which("ip") is None:
        why = "no ip: apt-get install iproute2 (tests/install-deps.sh)"
    if why is None:
        return
    if os.environ.get("CI") == "true":
        raise AssertionError(f"CI=true but {why}")
    raise SkipTest(why)


def substitute(text: str, old: str, new: str) -> str:
    """``text`` with its one ``old`` replaced: the shipped file must still say what we replace."""
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"contrib/nginx/mcpd.conf has {old!r} {count} times, not once")
    return text.replace(old, new)


def proxy_conf(upstream: int, http_port: int, https_port: int, cert: Path, key: Path, rate_limit: bool = False) -> str:
    """The shipped file with this test's ports and certificate (and its rate limit on, if asked)."""
    text = CONF.read_text(encoding="utf-8")
    text = substitute(text, "server 127.0.0.1:8765;", f"server 127.0.0.1:{upstream};")
    text = substitute(text, "    listen 80;\n", f"    listen {http_port};\n")
    text = substitute(text, "    listen 443 ssl http2;\n", f"    listen {https_port} ssl http2;\n")
    # The machine may have no IPv6: only the IPv4 listeners.
    text = substitute(text, "    listen [::]:80;\n", "")
    text = substitute(text, "    listen [::]:443 ssl http2;\n", "")
    text = substitute(text, "/etc/ssl/certs/mcpd.crt", str(cert))
    text = substitute(text, "/etc/ssl/private/mcpd.key", str(key))
    if rate_limit:
        text = substitute(text, "# limit_req_zone ", "limit_req_zone ")
        text = substitute(text, "# limit_req zone=", "limit_req zone=")
        text = substitute(text, "# limit_req_status ", "limit_req_status ")
    return text


class NginxTests(DaemonTestMixin, TestCase):
    timeout = 300

    def setUp(self) -> None:
        require_machine()

    def start_nginx(self, daemon_port: int, network: ClientNetwork) -> tuple[int, int, Path]:
        tls = make_tls_files(self.workdir / "certs", addresses=("127.0.0.1", network.host_address))
        # Chained, as a real certificate is served: the leaf, then the intermediate.
        fullchain = self.workdir / "certs" / "fullchain.pem"
        fullchain.write_bytes(tls.cert.read_bytes() + tls.chain.read_bytes())
        http_port, https_port = free_port(), free_port()
        (self.workdir / "mcpd.conf").write_text(proxy_conf(daemon_port, http_port, https_port, fullchain, tls.key))
        main = self.workdir / "nginx.conf"
        main.write_text(MAIN_CONF.format(dir=self.workdir))
        for name in ("body", "proxy"):
            (self.workdir / name).mkdir(exist_ok=True)
        checked = subprocess.run(
            [NGINX, "-t", "-p", str(self.workdir), "-c", str(main)], capture_output=True, text=True
        )
        self.assertEqual(checked.returncode, 0, checked.stderr)
        log = open(self.workdir / "nginx.stderr.log", "wb")  # noqa: SIM115
        self.addCleanup(log.close)
        process = subprocess.Popen([NGINX, "-p", str(self.workdir), "-c", str(main)], stdout=log, stderr=log)

        def stop() -> None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

        self.addCleanup(stop)
        deadline = time.monotonic() + 10
        while not port_answers(https_port) and time.monotonic() < deadline:
            self.assertIsNone(process.poll(), (self.workdir / "nginx-error.log").read_text())
            time.sleep(0.05)
        return http_port, https_port, tls.ca

    def in_namespace(self, network: ClientNetwork, argv: list[str], env: dict[str, str] | None = None) -> dict:
        done = subprocess.run(
            network.command(argv), capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=env or dict(os.environ)
        )
        self.assertEqual(done.returncode, 0, f"{' '.join(argv)}:\n{done.stderr[-4000:]}")
        result: dict = json.loads(done.stdout)
        return result

    def test_sdk_clients_through_nginx(self) -> Deferred[None]:
        network = ClientNetwork()
        self.addCleanup(network.close)
        daemon = self.start_daemon("--trusted-proxy", "127.0.0.1", "--insecure-no-auth", "--audit-log", "all")
        assert daemon.port is not None
        http_port, https_port, ca = self.start_nginx(daemon.port, network)
        base = f"https://{network.host_address}:{https_port}"
        try:
            ws_python = str(ensure_ws_client())
        except WSClientEnvError as e:
            if os.environ.get("CI") == "true":
                raise AssertionError(f"cannot create the {REQUIREMENT} virtualenv: {e}") from None
            raise SkipTest(f"no {REQUIREMENT} virtualenv: {e}") from None

        def drive() -> None:
            expected_tools = SERVER_TOOLS | FIXTURE_TOOLS
            for transport, path, mode in (
                ("streamable", "/mcp", "legacy"),
                ("streamable", "/mcp", "2026-07-28"),
                ("sse", "/sse", "legacy"),
            ):
                outcome = self.in_namespace(
                    network, [sys.executable, str(PROXY_CLIENT), transport, base + path, str(ca), mode]
                )
                self.assertTrue(set(outcome["tools"]) >= expected_tools, outcome)
                self.assertEqual(outcome["progress"], [1.0, 2.0, 3.0], (transport, mode, outcome))
                self.assertFalse(outcome["isError"])
            env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
            env["SSL_CERT_FILE"] = str(ca)
            outcome = self.in_namespace(
                network, [ws_python, str(WS_CLIENT), f"wss://{network.host_address}:{https_port}/ws"], env
            )
            self.assertIn("websocket", outcome["info"]["transports"])
            self.assertEqual([step[0] for step in outcome["progress"]], [1.0, 2.0, 3.0])

            # A client's own X-Forwarded-For is not believed: nginx appends the real peer.
            spoofed = self.in_namespace(
                network, [sys.executable, "-c", _FETCH, f"{base}/health", str(ca), "203.0.113.9"]
            )
            self.assertEqual(spoofed["status"], 200, spoofed)
            plain = f"http://{network.host_address}:{http_port}/mcp"
            redirect = self.in_namespace(network, [sys.executable, "-c", _FETCH, plain, str(ca), ""])
            self.assertEqual((redirect["status"], redirect["location"]), (301, f"https://{network.host_address}/mcp"))

            records = audit_records(daemon.log("stdout") + daemon.log())
            self.assertTrue(records, "no audit records")
            self.assertEqual({record["peer"] for record in records}, {network.client_address})
            self.assertTrue({record["transport"] for record in records} == {"http", "sse", "websocket"}, records)
            access = (self.workdir / "nginx-access.log").read_text()
            self.assertIn(network.client_address, access)
            self.assertIn('"GET /sse HTTP/1.1" 200', access)
            self.assertRegex(access, r'"GET /ws HTTP/1\.1" 101')

        return deferToThread(drive).addErrback(self.explain)

    def test_optional_rate_limit_is_valid(self) -> None:
        """The commented-out rate limit, switched on, is a configuration nginx accepts."""
        main = self.workdir / "nginx.conf"
        main.write_text(MAIN_CONF.format(dir=self.workdir))
        tls = make_tls_files(self.workdir / "certs")
        text = proxy_conf(free_port(), free_port(), free_port(), tls.cert, tls.key, rate_limit=True)
        self.assertRegex(text, r"(?m)^\s*limit_req zone=mcpd ")
        (self.workdir / "mcpd.conf").write_text(text)
        checked = subprocess.run(
            [NGINX, "-t", "-p", str(self.workdir), "-c", str(main)], capture_output=True, text=True
        )
        self.assertEqual(checked.returncode, 0, checked.stderr)

    def test_streaming_directives(self) -> None:
        """What SSE and WebSocket need through nginx is in the shipped file."""
        text = CONF.read_text(encoding="utf-8")
        for directive in (
            r"proxy_http_version 1\.1;",
            r"proxy_buffering off;",
            r"proxy_read_timeout 1h;",
            r"proxy_set_header Upgrade \$http_upgrade;",
            r"proxy_set_header Connection \$mcpd_connection;",
            r"proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;",
        ):
            self.assertRegex(text, re.compile(rf"(?m)^\s+{directive}$"))
