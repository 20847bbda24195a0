# Starts throwaway MariaDB and PostgreSQL servers on loopback for the tests,
# installing them from Debian's packages when missing. Sourced by scripts/test.
# Exports SHOAL_TEST_MYSQL_URL and SHOAL_TEST_POSTGRES_URL for the servers
# that started; a server that cannot start is reported loudly and its tests
# are skipped with the reason.

DB_ROOT="${SHOAL_TEST_DB_DIR:-/tmp/shoal-test-db}"
MYSQL_PORT=13306
PG_PORT=15432

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "!! cannot install $* (need root and apt-get)" >&2
        return 1
    fi
    if [ -z "${SHOAL_APT_UPDATED:-}" ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        export SHOAL_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

wait_port() { # host port seconds
    for _ in $(seq 0 $(($3 * 10))); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

start_mariadb() {
    if ! command -v mariadbd >/dev/null && ! [ -x /usr/sbin/mariadbd ]; then
        echo "-- installing mariadb-server from Debian's packages"
        apt_install mariadb-server || return 1
    fi
    if wait_port 127.0.0.1 $MYSQL_PORT 0; then
        export SHOAL_TEST_MYSQL_URL="mysql://shoal:shoal@127.0.0.1:$MYSQL_PORT/shoal"
        return 0
    fi
    local dir="$DB_ROOT/mariadb"
    rm -rf "$dir" && mkdir -p "$dir"
    local user=root
    id mysql >/dev/null 2>&1 && user=mysql && chown -R mysql "$dir"
    mysql_install_db --no-defaults --datadir="$dir/data" --user=$user --auth-root-authentication-method=normal >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; return 1; }
    (/usr/sbin/mariadbd --no-defaults --datadir="$dir/data" --socket="$dir/sock" --port=$MYSQL_PORT \
        --bind-address=127.0.0.1 --user=$user --skip-log-bin --innodb-flush-log-at-trx-commit=2 \
        --pid-file="$dir/pid" >"$dir/server.log" 2>&1 &)
    wait_port 127.0.0.1 $MYSQL_PORT 30 || { tail -20 "$dir/server.log" >&2; return 1; }
    mariadb --no-defaults -uroot --socket="$dir/sock" -e "
        DROP USER IF EXISTS ''@'localhost';
        DROP USER IF EXISTS ''@'$(hostname)';
        CREATE DATABASE IF NOT EXISTS shoal;
        CREATE USER IF NOT EXISTS 'shoal'@'%' IDENTIFIED BY 'shoal';
        CREATE USER IF NOT EXISTS 'shoal'@'localhost' IDENTIFIED BY 'shoal';
        GRANT ALL ON *.* TO 'shoal'@'%';
        GRANT ALL ON *.* TO 'shoal'@'localhost';" || return 1
    export SHOAL_TEST_MYSQL_URL="mysql://shoal:shoal@127.0.0.1:$MYSQL_PORT/shoal"
}

start_postgres() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$bin" ]; then
        echo "-- installing postgresql from Debian's packages"
        apt_install postgresql || return 1
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    if wait_port 127.0.0.1 $PG_PORT 0; then
        export SHOAL_TEST_POSTGRES_URL="postgres://shoal:shoal@127.0.0.1:$PG_PORT/shoal"
        return 0
    fi
    local dir="$DB_ROOT/postgres" run=""
    rm -rf "$dir" && mkdir -p "$dir"
    # PostgreSQL refuses to run as root: use the postgres user when we are root.
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd -r postgres
        chown -R postgres "$dir"
        run="runuser -u postgres --"
    fi
    echo shoal >"$dir/pw" && chmod 644 "$dir/pw"
    $run "$bin/initdb" -D "$dir/data" -U shoal --pwfile="$dir/pw" -A md5 >"$dir/init.log" 2>&1 || { cat "$dir/init.log" >&2; return 1; }
    $run "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $PG_PORT -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null || { tail -20 "$dir/server.log" >&2; return 1; }
    PGPASSWORD=shoal psql -h 127.0.0.1 -p $PG_PORT -U shoal -d postgres -qc "CREATE DATABASE shoal" >/dev/null 2>&1 || true
    export SHOAL_TEST_POSTGRES_URL="postgres://shoal:shoal@127.0.0.1:$PG_PORT/shoal"
}

start_databases() {
    start_mariadb || echo "!!!!! MariaDB could not start: its contract tests will be SKIPPED !!!!!" >&2
    start_postgres || echo "!!!!! PostgreSQL could not start: its contract tests will be SKIPPED !!!!!" >&2
}
