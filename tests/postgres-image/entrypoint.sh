#!/bin/sh
# What the official postgres image's entrypoint does with the settings docker-compose.yml gives
# it (that image cannot be pulled where tests/test_compose_docker.py runs): on an empty data
# directory, initdb with POSTGRES_USER as the superuser and the password of the file
# POSTGRES_PASSWORD_FILE (read as root, as the official image reads it), password
# (scram-sha-256) logins over TCP from anywhere, and the database POSTGRES_DB; then the command
# as the postgres user. initdb reads the password from a file: it is never on a command line or
# in an environment.
set -eu
: "${POSTGRES_PASSWORD_FILE:?is not set: this image, unlike the official one, has no other way to set a password}"

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
        copy="$(mktemp)"  # for initdb, which runs as postgres; removed once read
        cat "$POSTGRES_PASSWORD_FILE" > "$copy"
        chown postgres "$copy"
        export POSTGRES_PASSWORD_FILE="$copy"
    fi
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    user="${POSTGRES_USER:-postgres}"
    db="${POSTGRES_DB:-$user}"
    initdb --username="$user" --pwfile="$POSTGRES_PASSWORD_FILE" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    case "$POSTGRES_PASSWORD_FILE" in /tmp/*) rm -f "$POSTGRES_PASSWORD_FILE" ;; esac
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$db" != postgres ]; then
        pg_ctl --silent --wait --options="-c listen_addresses=''" start
        psql --quiet --no-psqlrc --username="$user" --dbname=postgres --set=ON_ERROR_STOP=1 --set=db="$db" \
            <<'SQL'
CREATE DATABASE :"db";
SQL
        pg_ctl --silent --wait --mode=fast stop
    fi
    echo "entrypoint: database $db initialized for user $user"
fi

exec "$@"
