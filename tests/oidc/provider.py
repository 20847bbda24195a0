"""A real OpenID Connect provider for shoal's JWT tests: django-oidc-provider
in a minimal Django project (SQLite in DIR), issuing RS256-signed ID tokens
and publishing its keys at /openid/jwks.

    provider.py setup  DIR URL   creates the database, user alice (password
                                 "alice-pw"), client shoal-test (secret
                                 "shoal-secret", password grant) and a key
    provider.py serve  DIR URL   serves on URL's host and port
    provider.py rotate DIR URL   adds a key, then drops the older ones: new
                                 tokens are signed with the new key

URL is the provider's base (http://127.0.0.1:PORT); tokens say
iss = URL/openid and aud = shoal-test.
"""

import os
import sys


def configure(directory, url):
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="shoal-test-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "oidc_provider",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(directory, "provider.sqlite3"),
                "OPTIONS": {"timeout": 20},
            }
        },
        USE_TZ=True,
        SITE_URL=url,
        LOGIN_URL="/login/",
        OIDC_GRANT_TYPE_PASSWORD_ENABLE=True,
        OIDC_IDTOKEN_EXPIRE=600,
        OIDC_IDTOKEN_INCLUDE_CLAIMS=True,
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
            }
        ],
    )
    django.setup()


def urls():
    from django.urls import include, path

    return [path("openid/", include("oidc_provider.urls", namespace="oidc_provider"))]


def new_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from oidc_provider.models import RSAKey

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return RSAKey.objects.create(key=pem)


def setup():
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from oidc_provider.models import Client

    call_command("migrate", verbosity=0)
    User.objects.create_user("alice", "alice@example.com", "alice-pw")
    Client.objects.create(
        name="shoal",
        client_id="shoal-test",
        client_secret="shoal-secret",
        client_type="confidential",
        jwt_alg="RS256",
        _scope="openid email",
    )
    new_key()


def rotate():
    from oidc_provider.models import RSAKey

    key = new_key()
    RSAKey.objects.exclude(id=key.id).delete()
    print(key.kid)


def serve(url):
    from django.core.management import call_command

    hostport = url.split("://", 1)[1].rstrip("/")
    call_command("runserver", hostport, use_reloader=False, use_threading=True)


urlpatterns = []

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("setup", "serve", "rotate"):
        sys.exit(__doc__)
    command, directory, base = sys.argv[1:]
    configure(directory, base)
    urlpatterns = urls()
    sys.modules[__name__].urlpatterns = urlpatterns
    {"setup": setup, "rotate": rotate, "serve": lambda: serve(base)}[command]()
