"""Observability and lifecycle against the real daemon (``twistd -n mcpd`` in a subprocess):
/health /ready /stats /metrics, the access rule, request ids in JSON logs, graceful shutdown on
SIGTERM, the contrib Grafana dashboard's series, and the /dashboard page in headless Chromium."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from tests.clients import fetch, open_websocket
from tests.daemon import MCPD, REPO_ROOT, DaemonTestCase, wait_for_event_blocking
from tests.security_harness import call_body, call_headers

KEYS = "root:root-key\nalice:alice-key:read\n"
ARTIFACTS = REPO_ROOT / ".ci-artifacts"
SEED_STATS = (
    "uptime_seconds",
    "total_requests",
    "successful_requests",
    "failed_requests",
    "success_rate",
    "avg_response_time",
    "active_connections",
    "recent_requests",
)


def call(port: int, tool: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return fetch(port, "POST", "/mcp", call_body(tool), call_headers(tool, **headers))


def metric_names(exposition: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


class EndpointTests(DaemonTestCase):
    def test_health_stats_metrics_and_request_ids_in_json_logs(self) -> Deferred[None]:
        keys = self.workdir / "keys.txt"
        keys.write_text(KEYS, encoding="utf-8")
        logfile = self.workdir / "mcpd.json.log"
        # Every call in the log (by default the SQL trail keeps them and the log the refusals).
        daemon = self.start_daemon(
            "--api-key-file", str(keys), "--log-format", "json", "--logfile", str(logfile), "--audit-log", "all"
        )

        def check() -> None:
            status, headers, _ = call(daemon.port, "server.info", Authorization="Bearer root-key")
            self.assertEqual(status, 200)
            request_id = headers["x-request-id"]
            status, refused, _ = call(daemon.port, "server.info")
            self.assertEqual(status, 401)
            self.assertIn("x-request-id", refused)

            status, headers, body = fetch(daemon.port, "GET", "/health")
            health = json.loads(body)
            self.assertEqual((status, health["status"]), (200, "healthy"))
            self.assertEqual(health["total_requests"], 1)
            # The stores of the default packs: SQL, and the search index (probed: it connects now).
            self.assertEqual(set(health["checks"]), {"thread_pool", "sessions", "sse_sessions", "database", "index"})
            self.assertIn("x-request-id", headers)
            self.assertEqual(json.loads(fetch(daemon.port, "GET", "/ready")[2]), {"ready": True, "state": "serving"})

            stats = json.loads(fetch(daemon.port, "GET", "/stats")[2])
            for key in SEED_STATS:
                self.assertIn(key, stats)
            self.assertEqual(stats["recent_requests"][0]["x_request_id"], request_id)
            self.assertEqual(stats["tools"]["server.info"]["requests"], 1)
            self.assertEqual(stats["transports"]["http"]["requests"], 1)
            self.assertEqual(stats["refusals"], {"auth_failure": 1})

            status, headers, body = fetch(daemon.port, "GET", "/metrics")
            self.assertEqual(status, 200)
            text = body.decode()
            self.assertIn("mcp_requests_total 1.0", text)
            self.assertIn("mcp_auth_failures_total 1.0", text)
            self.assertIn(
                'mcp_request_duration_seconds_count{method="tools/call",tool="server.info",transport="http"} 1.0', text
            )

            lines = [json.loads(line) for line in logfile.read_text(encoding="utf-8").splitlines()]
            audited = [line for line in lines if line.get("x_request_id") == request_id and line.get("outcome")]
            self.assertEqual(len(audited), 1, lines)
            line = audited[0]
            self.assertEqual(
                (line["key"], line["peer"], line["method"], line["tool"], line["outcome"]),
                ("root", "127.0.0.1", "tools/call", "server.info", "ok"),
            )
            self.assertIsInstance(line["duration"], float)
            self.assertTrue(any(line.get("outcome") == "auth_failure" for line in lines))

        return self.in_thread(check)

    def test_access_rule_beyond_loopback(self) -> Deferred[None]:
        keys = self.workdir / "keys.txt"
        keys.write_text(KEYS, encoding="utf-8")
        # Loopback is a trusted proxy here, so X-Forwarded-For makes a client beyond loopback.
        daemon = self.start_daemon("--api-key-file", str(keys), "--trusted-proxy", "127.0.0.1")
        daemon2 = self.start_daemon(
            "--api-key-file", str(keys), "--trusted-proxy", "127.0.0.1", "--public-metrics", name="public"
        )
        remote = {"X-Forwarded-For": "192.0.2.7"}

        def check() -> None:
            for served in (daemon, daemon2):
                self.assertEqual(call(served.port, "server.info", Authorization="Bearer root-key")[0], 200)
            self.assertEqual(fetch(daemon.port, "GET", "/health", headers=remote)[0], 200)
            self.assertEqual(fetch(daemon.port, "GET", "/ready", headers=remote)[0], 200)
            for path in ("/stats", "/metrics", "/dashboard"):
                self.assertEqual(fetch(daemon.port, "GET", path)[0], 200, path)  # loopback
                self.assertEqual(fetch(daemon.port, "GET", path, headers=remote)[0], 401, path)
                alice = {**remote, "Authorization": "Bearer alice-key"}
                self.assertEqual(fetch(daemon.port, "GET", path, headers=alice)[0], 403, path)
                root = {**remote, "Authorization": "Bearer root-key"}
                self.assertEqual(fetch(daemon.port, "GET", path, headers=root)[0], 200, path)
                self.assertEqual(fetch(daemon2.port, "GET", path, headers=remote)[0], 200, path)

        return self.in_thread(check)

    def test_grafana_dashboard_queries_real_series(self) -> Deferred[None]:
        daemon = self.start_daemon()
        dashboard = json.loads((REPO_ROOT / "contrib" / "grafana" / "mcpd.json").read_text(encoding="utf-8"))
        queried = set()
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                queried.update(re.findall(r"\bmcp_[a-z_]+", target["expr"]))
        for variable in dashboard["templating"]["list"]:
            queried.update(re.findall(r"\bmcp_[a-z_]+", variable["query"]))
        scrape = (REPO_ROOT / "contrib" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
        self.assertIn("metrics_path: /metrics", scrape)
        self.assertIn("job_name: mcpd", scrape)

        def check() -> None:
            call(daemon.port, "server.info")
            call(daemon.port, "no.such.tool")  # an error, so the error counter has a sample
            exposition = fetch(daemon.port, "GET", "/metrics")[2].decode()
            missing = queried - metric_names(exposition)
            self.assertEqual(missing, set(), f"series the Grafana dashboard queries but /metrics lacks: {missing}")
            self.assertGreaterEqual(len(queried), 10)

        return self.in_thread(check)

    def test_stdio_keeps_stdout_clean_with_json_logs(self) -> Deferred[None]:
        server = self.spawn_stdio(MCPD, "--stdio", "--log-format", "json")

        def check() -> None:
            server.send(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                }
            )
            self.assertEqual(server.receive()["id"], 1)
            server.close_stdin()
            self.assertEqual(server.wait(), 0)
            for line in server.stdout_lines:
                self.assertEqual(json.loads(line)["jsonrpc"], "2.0")
            logged = [json.loads(line) for line in server.stderr.splitlines() if line.strip()]
            self.assertTrue(logged)
            self.assertTrue(all("level" in line and "message" in line for line in logged))

        return self.in_thread(check)


class GracefulShutdownTests(DaemonTestCase):
    def test_call_in_flight_answered_new_connection_refused(self) -> Deferred[None]:
        daemon = self.start_daemon("--shutdown-timeout", "10")

        def check() -> None:
            answers: list[Any] = []
            tool = "tests.blocking_wait"
            body = json.loads(call_body(tool))
            body["params"]["arguments"] = {"label": "drain", "timeout": 1.5}

            def in_flight() -> None:
                answers.append(fetch(daemon.port, "POST", "/mcp", json.dumps(body).encode(), call_headers(tool)))

            # A keep-alive connection, and a legacy SSE stream, both open before SIGTERM.
            kept = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            kept.request("GET", "/ready")
            self.assertEqual(kept.getresponse().read(), b'{"ready": true, "state": "serving"}')
            stream = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
            stream.sendall(b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            websocket = open_websocket(daemon.port)
            caller = threading.Thread(target=in_flight, daemon=True)
            caller.start()
            wait_for_event_blocking(daemon.events, f"started {tool} drain")
            daemon.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", daemon.port), timeout=2)
            kept.request("GET", "/ready")
            response = kept.getresponse()
            self.assertEqual((response.status, json.loads(response.read())["state"]), (503, "draining"))
            kept.close()
            caller.join(10)
            self.assertEqual(daemon.process.wait(10), 0)
            status, headers, answer = answers[0]
            self.assertEqual(status, 200)
            result = json.loads(answer)["result"]
            self.assertEqual(result["content"][0]["text"], "not cancelled within 1.5 seconds")
            streamed = b""
            while chunk := stream.recv(65536):
                streamed += chunk
            stream.close()
            self.assertIn(b"event: endpoint", streamed)
            self.assertIn(b"retry: 2000", streamed)
            # WebSockets are closed "going away" (1001) with a hint to come back.
            code, reason = websocket_close(*websocket)
            self.assertEqual(code, 1001)
            self.assertIn("retry", reason)
            log = daemon.log("stdout")
            self.assertLess(log.index("Shutting down: draining"), log.index("Drained"))

        return self.in_thread(check)


def websocket_close(sock: socket.socket, ws: Any) -> tuple[int, str]:
    """Read until the server closes the WebSocket; its close code and reason."""
    from wsproto.events import CloseConnection

    while data := sock.recv(65536):
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, CloseConnection):
                sock.close()
                return event.code, event.reason
    sock.close()
    raise AssertionError("the WebSocket ended without a close frame")


def chromium_driver() -> tuple[str, str] | None:
    """The Chromium binary and its driver, or None (a failure under CI)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary and driver:
        return binary, driver
    if os.environ.get("CI") == "true":
        raise AssertionError("CI=true but Chromium is missing: .ci/run installs chromium and chromium-driver")
    return None


class DashboardBrowserTests(DaemonTestCase):
    timeout = 60

    def test_dashboard_in_headless_chromium(self) -> Deferred[None]:
        found = chromium_driver()
        if found is None:
            raise SkipTest("no chromium / chromedriver (apt-get install -y chromium chromium-driver)")
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait
        except ImportError:
            if os.environ.get("CI") == "true":
                raise
            raise SkipTest("selenium is not installed (pip install -e '.[tests]')") from None
        binary, driver_path = found
        daemon = self.start_daemon()
        profile = self.workdir / "chromium-profile"

        def check() -> None:
            options = webdriver.ChromeOptions()
            options.binary_location = binary
            for flag in (
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--window-size=1280,1000",
                f"--user-data-dir={profile}",
            ):
                options.add_argument(flag)
            options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
            service = Service(driver_path, log_output=str(self.workdir / "chromedriver.log"))
            browser = webdriver.Chrome(options=options, service=service)
            try:
                browser.get(f"http://127.0.0.1:{daemon.port}/dashboard?interval=300")
                wait = WebDriverWait(browser, 15)
                wait.until(lambda b: b.find_element(By.ID, "status").text == "live")
                before = int(browser.find_element(By.ID, "total").text)
                for _ in range(5):
                    call(daemon.port, "server.info")
                call(daemon.port, "no.such.tool")
                wait.until(lambda b: int(b.find_element(By.ID, "total").text) >= before + 6)
                wait.until(lambda b: "server.info" in b.find_element(By.ID, "tools").text)
                wait.until(lambda b: b.find_element(By.ID, "failed").text != "0")
                self.assertIn("tools/call", browser.find_element(By.ID, "recent").text)
                self.assertRegex(browser.find_element(By.ID, "p99").text, r"^\d+(\.\d+)? ms$")
                wait.until(lambda b: float(b.find_element(By.ID, "rate").text) >= 0)
                time.sleep(0.5)
                ARTIFACTS.mkdir(exist_ok=True)
                browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
                problems = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
                self.assertEqual(problems, [], "console errors on the dashboard")
            finally:
                browser.quit()

        return self.in_thread(check)
