#!/bin/sh
# Writes the secrets docker-compose.yml reads, into contrib/docker/secrets/ (git-ignored), once:
# an existing file is kept. Replace tls.crt / tls.key with your real certificate.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
chmod 700 secrets
cd secrets

secret() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
write() {  # write NAME CONTENT: once, readable inside the containers (the directory is 0700)
    [ -e "$1" ] && return 0
    printf '%s\n' "$2" > "$1"
    chmod 644 "$1"
    echo "wrote contrib/docker/secrets/$1"
}

write mcpd-keys "admin:$(secret)
prometheus:$(secret):admin"
sed -n 's/^prometheus:\([^:]*\):.*/\1/p' mcpd-keys > prometheus-key.new
[ -e prometheus-key ] || { mv prometheus-key.new prometheus-key; chmod 644 prometheus-key; }
rm -f prometheus-key.new
write state-key.env "STATE_KEY=$(secret)"
write mysql-password "$(secret)"
write mysql-root-password "$(secret)"
write grafana-admin-password "$(secret)"
minio_user=mcpd-$(secret | cut -c1-8)
minio_password=$(secret)
write minio.env "MINIO_ROOT_USER=$minio_user
MINIO_ROOT_PASSWORD=$minio_password
MINIO_ACCESS_KEY_ID=$minio_user
MINIO_SECRET_ACCESS_KEY=$minio_password"
if [ ! -e tls.crt ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout tls.key -out tls.crt 2>/dev/null
    chmod 600 tls.key && chmod 644 tls.crt
    echo "wrote a self-signed contrib/docker/secrets/tls.crt (replace it with your own)"
fi
