"""The Dockerfile and docker-compose.yml, checked without Docker (it cannot run here).

Both files are parsed (the Dockerfile by its instructions, the compose file with PyYAML) and
every environment variable they give mcpd is checked against mcpd's settings table and parsed
by it; every port they name is checked against mcpd's PORT, nginx's configuration and
Prometheus' target; every file they mount exists, or is written by contrib/docker/make-secrets.sh
(which the test runs). The image's HEALTHCHECK command is run against a real daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mcpd.config import KNOBS, read_env_file, resolve
from tests.daemon import PYTHON, REPO_ROOT, DaemonTestMixin, call_server_info, free_port

DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"
NGINX_CONF = REPO_ROOT / "contrib" / "nginx" / "mcpd.conf"
KNOWN = {knob.env for knob in KNOBS}


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def instruction(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for found, arguments in stage if found == name]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in instruction(stage, "ENV"):
        for assignment in re.findall(r"(\w+)=(\S+)", arguments):
            env[assignment[0]] = assignment[1]
    return env


def check_settings(test: SynchronousTestCase, env: dict[str, str], where: str) -> None:
    """Every mcpd variable in ``env`` is a setting (or a pending one) and mcpd accepts its value."""
    unknown = sorted(set(env) - KNOWN)
    test.assertEqual(unknown, [], f"{where}: not settings of mcpd (mcpd --help lists them)")
    resolve({}, {name: value for name, value in env.items() if name in KNOWN}, {})


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


class DockerfileTests(SynchronousTestCase):
    def test_multi_stage_non_root_with_a_data_volume(self) -> None:
        stages = dockerfile_stages()
        self.assertGreaterEqual(len(stages), 2)
        build, runtime = stages[0], stages[-1]
        self.assertRegex(instruction(build, "FROM")[0], r" AS build$")
        self.assertTrue(any("--from=build" in copy for copy in instruction(runtime, "COPY")))
        self.assertFalse(instruction(runtime, "RUN") and "pip install" in " ".join(instruction(runtime, "RUN")))
        self.assertEqual(instruction(runtime, "USER"), ["mcpd"])
        env = dockerfile_env(runtime)
        check_settings(
            self, {name: value for name, value in env.items() if name not in ("PATH", "PYTHONUNBUFFERED")}, "Dockerfile"
        )
        self.assertEqual(
            instruction(runtime, "EXPOSE"), [str(next(knob.default for knob in KNOBS if knob.env == "PORT"))]
        )
        self.assertEqual(json.loads(instruction(runtime, "VOLUME")[0]), [env["DATA_DIR"]])
        self.assertEqual(instruction(runtime, "WORKDIR"), [env["DATA_DIR"]])
        self.assertEqual(json.loads(instruction(runtime, "ENTRYPOINT")[0]), ["mcpd"])
        self.assertIn("mcpd = mcpd.cli:main", (REPO_ROOT / "setup.cfg").read_text())

    def test_listen_alone_replaces_the_plain_listener(self) -> None:
        """The image's environment leaves PORT to mcpd's default: LISTEN=ssl:... then serves
        TLS only, not plain HTTP on 0.0.0.0:8765 besides."""
        env = dockerfile_env(dockerfile_stages()[-1])
        self.assertNotIn("PORT", env)
        listen = "ssl:8443:privateKey=/run/secrets/key.pem:certKey=/run/secrets/cert.pem"
        known = {name: value for name, value in env.items() if name in KNOWN}
        self.assertEqual(resolve({}, {**known, "LISTEN": listen}, {}).http_endpoints(), [listen])
        self.assertEqual(resolve({}, known, {}).http_endpoints(), ["tcp:8765:interface=0.0.0.0"])

    def test_build_context_has_what_the_image_copies(self) -> None:
        ignored = (REPO_ROOT / ".dockerignore").read_text().split()
        for arguments in instruction(dockerfile_stages()[0], "COPY"):
            for source in arguments.split()[:-1]:
                self.assertTrue((REPO_ROOT / source).exists(), source)
                self.assertNotIn(source, ignored)


class HealthcheckTests(DaemonTestMixin, TestCase):
    """The image's HEALTHCHECK command, run as Docker would, against a real daemon."""

    timeout = 60

    def healthcheck(self) -> list[str]:
        runtime = dockerfile_stages()[-1]
        (line,) = instruction(runtime, "HEALTHCHECK")
        self.assertIn("/ready", line)
        command: list[str] = json.loads(line.split(" CMD ", 1)[1])
        self.assertEqual(command[0], "python")
        return [PYTHON, *command[1:]]

    def test_healthcheck_follows_ready(self) -> Deferred[None]:
        port = free_port()
        self.start_daemon(port=port, pick_port=False, env={"PORT": str(port)})
        command = self.healthcheck()

        def check() -> None:
            env = {**os.environ, "PORT": str(port)}
            self.assertEqual(subprocess.run(command, env=env, capture_output=True, timeout=10).returncode, 0)
            self.assertEqual(call_server_info(port)["name"], "mcpd")  # and it serves MCP there
            env["PORT"] = str(free_port())  # nothing listens there
            self.assertNotEqual(subprocess.run(command, env=env, capture_output=True, timeout=10).returncode, 0)

        return deferToThread(check).addErrback(self.explain)


class ComposeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.services: dict[str, Any] = compose()["services"]
        self.mcpd = self.services["mcpd"]
        self.env = {name: str(value) for name, value in self.mcpd["environment"].items()}

    def test_the_stack(self) -> None:
        images = {name: service.get("image", "") for name, service in self.services.items()}
        self.assertRegex(images["mysql"], r"^mysql:8")
        self.assertRegex(images["redis"], r"^redis:7")
        self.assertRegex(images["milvus"], r"^milvusdb/milvus:")
        self.assertEqual(self.services["milvus"]["command"], ["milvus", "run", "standalone"])
        self.assertRegex(images["nginx"], r"^nginx:")
        self.assertRegex(images["prometheus"], r"^prom/prometheus:")
        self.assertRegex(images["grafana"], r"^grafana/grafana:")
        self.assertEqual(self.mcpd["build"], ".")
        for name, service in self.services.items():
            for needed in service.get("depends_on", []):
                self.assertIn(needed, self.services, f"{name} depends on {needed}")

    def test_mcpd_environment_is_mcpd_settings(self) -> None:
        check_settings(self, self.env, "docker-compose.yml, service mcpd")
        for env_file in [self.mcpd["env_file"]]:
            self.assertTrue(env_file.startswith("contrib/docker/secrets/"))
        # The stores it names are the compose services, on their own ports.
        self.assertRegex(self.env["DB_URL"], r"^mysql\+pymysql://mcpd@mysql:3306/mcpd$")
        self.assertEqual(self.services["mysql"]["environment"]["MYSQL_DATABASE"], "mcpd")
        self.assertEqual(self.services["mysql"]["environment"]["MYSQL_USER"], "mcpd")
        self.assertEqual(self.env["REDIS_URL"], "redis://redis:6379/0")
        self.assertEqual(self.env["MILVUS_URI"], "http://milvus:19530")
        for service, port in (("mysql", "3306"), ("redis", "6379"), ("milvus", "19530")):
            self.assertIn(port, [str(p) for p in self.services[service]["expose"]])
        secrets = set(self.mcpd["secrets"])
        for name in ("API_KEY_FILE", "DB_PASSWORD_FILE"):
            self.assertRegex(self.env[name], r"^/run/secrets/\w+$")
            self.assertIn(self.env[name].rsplit("/", 1)[1], secrets)

    def test_ports_agree(self) -> None:
        port = self.env["PORT"]
        self.assertEqual([str(p) for p in self.mcpd["expose"]], [port])
        nginx = self.services["nginx"]
        self.assertEqual(nginx["network_mode"], "service:mcpd")
        conf = NGINX_CONF.read_text(encoding="utf-8")
        self.assertIn(f"server 127.0.0.1:{port};", conf)
        self.assertEqual(self.env["TRUSTED_PROXIES"], "127.0.0.1")  # nginx, in mcpd's namespace
        listens = set(re.findall(r"(?m)^\s*listen (\d+)", conf))
        published = {mapping.split(":")[-1] for mapping in self.mcpd["ports"]}
        self.assertEqual(published, listens)
        mounted = {volume.split(":")[1] for volume in nginx["volumes"]}
        for path in re.findall(r"ssl_certificate(?:_key)? (\S+);", conf):
            self.assertIn(path, mounted)
        scrape = yaml.safe_load((REPO_ROOT / "contrib" / "docker" / "prometheus.yml").read_text())
        (job,) = scrape["scrape_configs"]
        self.assertEqual(job["static_configs"][0]["targets"], [f"mcpd:{port}"])
        credentials = job["authorization"]["credentials_file"]
        self.assertIn(credentials.rsplit("/", 1)[1], self.services["prometheus"]["secrets"])

    def test_grafana_gets_the_dashboard(self) -> None:
        grafana = self.services["grafana"]
        mounts = dict(
            volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"] if volume.startswith("./")
        )
        self.assertEqual(mounts["./contrib/grafana/mcpd.json"], "/var/lib/grafana/dashboards/mcpd.json")
        provider = yaml.safe_load((REPO_ROOT / "contrib" / "docker" / "grafana" / "dashboards.yml").read_text())
        self.assertEqual(provider["providers"][0]["options"]["path"], "/var/lib/grafana/dashboards")
        source = yaml.safe_load((REPO_ROOT / "contrib" / "docker" / "grafana" / "datasource.yml").read_text())
        self.assertEqual(source["datasources"][0]["url"], "http://prometheus:9090")
        dashboard = json.loads((REPO_ROOT / "contrib" / "grafana" / "mcpd.json").read_text())
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        # Provisioned dashboards get no __inputs: the ${DS_PROMETHEUS} references resolve
        # through a data source variable of that name.
        self.assertEqual(variables["DS_PROMETHEUS"]["type"], "datasource")
        self.assertEqual(variables["DS_PROMETHEUS"]["query"], "prometheus")

    def test_every_mounted_file_exists_or_is_made_by_make_secrets(self) -> None:
        """Run make-secrets.sh in a copy of contrib/docker: it writes every secret and env file the
        compose file names, and mcpd accepts what it writes; other mounted files are in the repo."""
        copy = Path(self.mktemp()) / "contrib" / "docker"
        copy.parent.mkdir(parents=True)
        shutil.copytree(REPO_ROOT / "contrib" / "docker", copy, ignore=shutil.ignore_patterns("secrets"))
        done = subprocess.run(["sh", str(copy / "make-secrets.sh")], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        root = copy.parent.parent
        made = compose()
        needed = [secret["file"] for secret in made["secrets"].values()]
        for service in made["services"].values():
            env_file = service.get("env_file")
            needed += [env_file] if isinstance(env_file, str) else env_file or []
            needed += [
                v.split(":")[0][2:] for v in service.get("volumes", []) if v.startswith("./contrib/docker/secrets/")
            ]
        for path in needed:
            self.assertTrue((root / path).is_file(), f"{path} is not written by make-secrets.sh")
        for service in made["services"].values():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("./") and "/secrets/" not in source:
                    self.assertTrue((REPO_ROOT / source).exists(), source)
        secrets_env = read_env_file(str(root / self.mcpd["env_file"]))
        check_settings(self, secrets_env, "state-key.env")
        self.assertEqual(set(secrets_env), {"STATE_KEY"})
        keys = (root / "contrib/docker/secrets/mcpd-keys").read_text()
        prometheus_key = (root / "contrib/docker/secrets/prometheus-key").read_text().strip()
        self.assertIn(f"prometheus:{prometheus_key}:admin", keys)
        from mcpd.security.keys import read_key_file

        self.assertEqual(
            [key.name for key in read_key_file(str(root / "contrib/docker/secrets/mcpd-keys"))], ["admin", "prometheus"]
        )
        again = subprocess.run(["sh", str(copy / "make-secrets.sh")], capture_output=True, text=True, timeout=60)
        self.assertEqual(again.stdout, "", "make-secrets.sh keeps what it wrote")
        self.assertIn("contrib/docker/secrets/", (REPO_ROOT / ".gitignore").read_text())
