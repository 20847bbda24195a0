# A headless browser for the dashboard's end-to-end test: Chromium from
# Debian's packages. Sourced by scripts/test.

browser_ok() {
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null
}

# ensure_browser: 0 when Chromium is there (installing it if root and
# apt-get are there), 1 with a message saying what to install.
ensure_browser() {
    browser_ok && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "!! the dashboard's browser test needs Debian's chromium: apt-get install chromium" >&2
        return 1
    fi
    echo "-- installing chromium from Debian's packages (the dashboard's browser test)"
    if [ -z "${SHOAL_APT_UPDATED:-}" ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        export SHOAL_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || true
    browser_ok && return 0
    echo "!! chromium did not install: apt-get install chromium" >&2
    return 1
}
