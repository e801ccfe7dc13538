"""API keys on the REST API: who is calling, and are they within their limits.

A request presents its key as ``Authorization: Bearer <key>`` (what the OpenAI SDK sends).

* With ``settings.gateway.require_api_key``: a request without a key gets 401 (``code`` null),
  one with an unknown key 401 ``invalid_api_key``. The shared service token
  (``settings.auth_token``) is accepted as a key without limits.
* Without it, anyone may call; a valid key still gets its limits applied (so keys can be
  handed out before they are required), any other key is ignored.
* Admin endpoints need an admin key or the service token whenever ``require_api_key`` or
  ``auth_token`` is set (401 without a valid key, 403 with a non-admin key); otherwise (a
  local, unsecured gateway) they are open like the rest.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from swiftmesh.runtime.config import Settings

from ..keys import ApiKey, ApiKeyStore
from ..ratelimit import RateLimiter, Remaining
from .errors import APIError

_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def _mask(secret: str) -> str:
    if len(secret) <= 8:
        return "*" * len(secret)
    return f"{secret[:6]}{'*' * 8}{secret[-4:]}"


@dataclass(frozen=True)
class Principal:
    """The caller: an API key, the service token, or anonymous (no key required)."""

    key: ApiKey | None = None
    service: bool = False

    @property
    def admin(self) -> bool:
        """Whether the caller may use the admin endpoints (the service token or an admin key)."""
        return self.service or (self.key is not None and self.key.admin)


class Authenticator:
    """Resolves the caller of a request and applies its rate limits."""

    def __init__(self, settings: Settings, keys: ApiKeyStore, limiter: RateLimiter) -> None:
        self.required = settings.gateway.require_api_key
        self.secured = self.required or settings.auth_token is not None
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self._token = token.encode() if token else None
        self.keys = keys
        self.limiter = limiter

    @staticmethod
    def _bearer(request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
        return header.strip() if header and " " not in header.strip() else ""

    def principal(self, request: Request, *, required: bool | None = None) -> Principal:
        """Who calls; APIError 401 when a key is required and missing or wrong."""
        need = self.required if required is None else required
        secret = self._bearer(request)
        if secret and self._token is not None and hmac.compare_digest(secret.encode(), self._token):
            return Principal(service=True)
        key = self.keys.verify(secret) if secret else None
        if key is not None:
            return Principal(key=key)
        if not need:
            return Principal()
        if not secret:
            raise APIError(401, _MISSING, code=None)
        raise APIError(401, f"Incorrect API key provided: {_mask(secret)}.", code="invalid_api_key")

    def admit(self, principal: Principal) -> dict[str, str]:
        """Count one request against the caller's limits (429 APIError over them). Returns the
        ``x-ratelimit-*`` headers for the answer."""
        key = principal.key
        if key is None:
            return {}
        remaining: Remaining = self.limiter.acquire(key.key_id, key.requests_per_minute, key.tokens_per_minute)
        headers = {}
        if key.requests_per_minute > 0:
            headers["x-ratelimit-limit-requests"] = str(key.requests_per_minute)
            headers["x-ratelimit-remaining-requests"] = str(max(remaining.requests, 0))
        if key.tokens_per_minute > 0:
            headers["x-ratelimit-limit-tokens"] = str(key.tokens_per_minute)
            headers["x-ratelimit-remaining-tokens"] = str(max(remaining.tokens, 0))
        return headers

    def usage_recorder(self, principal: Principal):
        """A callback counting a finished request's tokens against the caller (or None)."""
        key = principal.key
        if key is None or key.tokens_per_minute <= 0:
            return None
        return lambda tokens: self.limiter.record_tokens(key.key_id, tokens, key.tokens_per_minute)

    def admin(self, request: Request) -> Principal:
        """The caller of an admin endpoint: 401 without a valid key, 403 with a non-admin key
        (only when the gateway is secured: ``require_api_key`` or ``auth_token``)."""
        if not self.secured:
            return Principal(service=True)
        principal = self.principal(request, required=True)
        if not principal.admin:
            raise APIError(403, "This endpoint needs an admin API key or the service token.",
                           code="insufficient_permissions")
        return principal
