# syntax=docker/dockerfile:1
# mcpd in a container. Build:  docker build -t mcpd .
# Run:    docker run -p 8765:8765 -v mcpd-data:/var/lib/mcpd -e API_KEYS=... mcpd
# Every setting is an environment variable (etc/mcpd.env lists them); docker-compose.yml runs it
# with MySQL, Redis, Milvus, nginx, Prometheus and Grafana.

# -- build: a virtualenv with mcpd, its dependencies and the `vector` extra (Milvus Lite, jieba: the
#    knowledge base and memory packs), and Twisted's plugin cache ------------------------------------
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.rst ./
COPY mcpd ./mcpd
COPY twisted ./twisted
RUN python -m venv /opt/mcpd \
    && /opt/mcpd/bin/pip install --no-cache-dir --disable-pip-version-check '.[vector]' \
    && /opt/mcpd/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

# -- runtime: the virtualenv only, run by an unprivileged user ------------------------------------
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 mcpd \
    && useradd --system --uid 10001 --gid mcpd --home-dir /var/lib/mcpd --no-create-home --shell /usr/sbin/nologin mcpd \
    && install -d -o mcpd -g mcpd -m 0750 /var/lib/mcpd
COPY --from=build /opt/mcpd /opt/mcpd
# Inside a container mcpd serves its network (0.0.0.0), with API keys: give API_KEYS or
# API_KEY_FILE (a key file as a secret), or INSECURE_NO_AUTH=1 on a trusted network only. No
# PORT here: mcpd's default is 8765, and a PORT set would keep plain HTTP on even when LISTEN
# alone names the listeners (LISTEN=ssl:...); then give PORT too for the HEALTHCHECK, or your own.
ENV PATH=/opt/mcpd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    DATA_DIR=/var/lib/mcpd \
    LOG_FORMAT=json
USER mcpd
WORKDIR /var/lib/mcpd
VOLUME ["/var/lib/mcpd"]
EXPOSE 8765
# /ready answers 200 once mcpd serves and 503 while it starts or drains (always open, no key).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('PORT', '8765'), timeout=4).status != 200)"]
# SIGTERM drains: calls in flight finish (SHUTDOWN_TIMEOUT, 30 s): give `docker stop -t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mcpd"]
