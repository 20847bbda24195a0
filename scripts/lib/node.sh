# board-service's runtime: Node.js with express, sqlite3 and mysql, all from
# Debian's packages (no other package registry is reachable). Sourced by
# scripts/test and scripts/run-local.
#
# node-sqlite3 is built against Debian's own nodejs (libnode); a nodejs from
# elsewhere (NodeSource) cannot load it, so Debian's is installed in its
# place when needed.

BOARD_PACKAGES="nodejs libnode108 node-express node-sqlite3 node-mysql"

board_runtime_ok() {
    command -v node >/dev/null &&
        node -e "require('express'); require('sqlite3'); require('mysql')" >/dev/null 2>&1
}

# ensure_board_runtime: 0 when board-service can run (installing the packages
# if root and apt-get are there), 1 with a message saying what to install.
ensure_board_runtime() {
    board_runtime_ok && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "!! board-service needs Debian's: apt-get install $BOARD_PACKAGES" >&2
        return 1
    fi
    echo "-- installing board-service's runtime from Debian's packages ($BOARD_PACKAGES)"
    if [ -z "${SHOAL_APT_UPDATED:-}" ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        export SHOAL_APT_UPDATED=1
    fi
    # Debian's own nodejs, even where a newer one from elsewhere is installed.
    local version
    version=$(apt-cache madison nodejs | awk -F'|' '$3 ~ /debian/ {gsub(/ /, "", $2); print $2; exit}')
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
        "nodejs${version:+=$version}" libnode108 node-express node-sqlite3 node-mysql >/dev/null 2>&1 || true
    if board_runtime_ok; then
        return 0
    fi
    echo "!! board-service's runtime did not install: apt-get install $BOARD_PACKAGES" >&2
    return 1
}
