# A real OpenID Connect provider for the JWT tests (tests/oidc/provider.py):
# django-oidc-provider from PyPI in a virtualenv under target/. Sourced by
# scripts/test.

OIDC_VENV="${OIDC_VENV:-target/oidc-venv}"

oidc_ok() {
    "$OIDC_VENV/bin/python" -c "import django, oidc_provider" >/dev/null 2>&1
}

# ensure_oidc_provider: 0 when the provider's virtualenv is ready (made if
# python3 and PyPI are there), 1 with a message saying what is missing.
ensure_oidc_provider() {
    oidc_ok && return 0
    if ! python3 -m venv --help >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            if [ -z "${SHOAL_APT_UPDATED:-}" ]; then
                apt-get update -qq >/dev/null 2>&1 || true
                export SHOAL_APT_UPDATED=1
            fi
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1 || true
        fi
    fi
    echo "-- a virtualenv with django-oidc-provider (the JWT tests' OpenID Connect provider)"
    python3 -m venv "$OIDC_VENV" >/dev/null 2>&1 &&
        "$OIDC_VENV/bin/pip" install -q "django>=5.2,<6" "django-oidc-provider==0.9.0" >/dev/null 2>&1
    oidc_ok && return 0
    echo "!! the JWT tests need python3-venv and PyPI's django-oidc-provider (scripts/lib/oidc.sh)" >&2
    return 1
}
