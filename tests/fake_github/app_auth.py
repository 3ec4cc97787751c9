# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""GitHub App authentication: ``POST /app/installations/{id}/access_tokens`` with an RS256 JWT
signed by the key of an app registered with ``register_app``; installation tokens expire."""

from __future__ import annotations

import json
import secrets
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from .common import (
    _b64url_decode, CLOCK_SKEW, _error, INSTALLATION_TOKEN_LIFETIME, MAX_JWT_LIFETIME, _not_found)


class AppAuth:
    """GitHub App authentication."""

    ROUTES = [
        ("POST", r"/app/installations/([0-9]+)/access_tokens", "_post_access_token"),
    ]

    def register_app(self, app_id, public_key, installation_ids=(1,), slug="testfleet-app"):
        """Register a GitHub App: ``public_key`` (PEM text or bytes) verifies its JWTs;
        ``installation_ids`` are the installations it may get tokens for."""
        if isinstance(public_key, str):
            public_key = public_key.encode()
        key = serialization.load_pem_public_key(public_key)
        with self._lock:
            self._apps[str(app_id)] = {"key": key, "installations": set(installation_ids), "slug": slug}

    def installation_tokens(self):
        """The installation tokens handed out so far (for tests that check they are used)."""
        with self._lock:
            return list(self._installation_tokens)

    def _post_access_token(self, installation_id, query, body, auth):
        app = self._verify_jwt(auth[1])
        installation_id = int(installation_id)
        if installation_id not in app["installations"]:
            raise _not_found()
        token = "ghs_fake" + secrets.token_hex(16)
        expires = self._now() + INSTALLATION_TOKEN_LIFETIME
        self._installation_tokens[token] = {"installation": installation_id, "expires": expires,
                                            "login": app["slug"] + "[bot]"}
        return 201, {"token": token, "expires_at": self._iso(expires),
                     "permissions": {"metadata": "read", "contents": "read", "pull_requests": "read",
                                     "statuses": "write", "issues": "write",
                                     "repository_hooks": "write"},
                     "repository_selection": "all"}

    def _verify_jwt(self, jwt):
        """The registered app that signed ``jwt`` (RS256, fresh, at most 10 minutes long)."""
        undecodable = _error(401, "A JSON web token could not be decoded")
        parts = jwt.split(".")
        if len(parts) != 3:
            raise undecodable
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except ValueError:
            raise undecodable
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            raise undecodable
        app = self._apps.get(str(claims.get("iss")))
        if app is None:
            raise _error(401, "Integration not found")
        try:
            app["key"].verify(signature, ("%s.%s" % (parts[0], parts[1])).encode(), padding.PKCS1v15(),
                              hashes.SHA256())
        except InvalidSignature:
            raise undecodable
        issued, expires = claims.get("iat"), claims.get("exp")
        now = time.time()  # the signer (PyGithub) uses the real clock, whatever ours says
        if not isinstance(issued, int) or issued > now + CLOCK_SKEW:
            raise _error(401, "'Issued at' claim ('iat') must be an Integer representing the time that "
                              "the assertion was issued")
        if not isinstance(expires, int) or expires <= now:
            raise _error(401, "'Expiration time' claim ('exp') must be a numeric value representing the "
                              "future time at which the assertion expires")
        if expires > now + MAX_JWT_LIFETIME + CLOCK_SKEW:
            raise _error(401, "'Expiration time' claim ('exp') is too far in the future")
        return app
