"""API keys on the REST API: who is calling, and are they within their limits.

A request presents its key as ``Authorization: Bearer <key>`` (what the OpenAI SDK sends).

* With ``settings.gateway.require_api_key``: a request without a key gets 401 (``code`` null),
  one with an unknown key 401 ``invalid_api_key``. The shared service token
  (``settings.auth_token``) is accepted as a key without limits.
* Without it, anyone may call; a valid key still gets its limits applied (so keys can be
  handed out before they are required), any other key is ignored.
* A credential under another scheme (``Authorization: Basic ...``) is not read: 401 saying the
  scheme must be Bearer.
* Admin endpoints need an admin key or the service token whenever ``require_api_key`` or
  ``auth_token`` is set (401 without a valid key, 403 with a non-admin key); otherwise (a
  local, unsecured gateway) only loopback callers (127.0.0.0/8, ::1) may use them (403
  ``loopback_only`` for any other peer), so a dev gateway still works with the CLI.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from swiftmesh.runtime.config import Settings
from swiftmesh.runtime.host import is_loopback

from ..keys import ApiKey, ApiKeyStore
from ..ratelimit import RateLimiter, Remaining
from ..usage import UsageLedger
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
    # The client address of an anonymous caller (limited by gateway.anonymous_requests_per_minute).
    address: str = ""

    @property
    def admin(self) -> bool:
        """Whether the caller may use the admin endpoints (the service token or an admin key)."""
        return self.service or (self.key is not None and self.key.admin)


class Authenticator:
    """Resolves the caller of a request, applies its rate limits and counts its usage (per key,
    in ``usage`` when given)."""

    def __init__(self, settings: Settings, keys: ApiKeyStore, limiter: RateLimiter,
                 usage: UsageLedger | None = None) -> None:
        self.required = settings.gateway.require_api_key
        self.secured = self.required or settings.auth_token is not None
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        self._token = token.encode() if token else None
        self.keys = keys
        self.limiter = limiter
        self.anonymous_rpm = settings.gateway.anonymous_requests_per_minute
        self.usage = usage

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
            return Principal(address=request.client.host if request.client else "")
        if not secret:
            scheme = request.headers.get("authorization", "").strip().partition(" ")[0]
            if scheme and scheme.lower() != "bearer":  # e.g. Basic: a credential, but not as Bearer
                raise APIError(401, f"The Authorization header uses the {scheme[:20]!r} scheme; API keys must be "
                               "sent with the Bearer scheme (i.e. Authorization: Bearer YOUR_KEY).", code=None)
            raise APIError(401, _MISSING, code=None)
        raise APIError(401, f"Incorrect API key provided: {_mask(secret)}.", code="invalid_api_key")

    def admit(self, principal: Principal) -> dict[str, str]:
        """Count one request against the caller's limits (429 APIError over them). Returns the
        ``x-ratelimit-*`` headers for the answer."""
        key = principal.key
        if key is None:
            if principal.service or self.anonymous_rpm <= 0:
                return {}
            remaining = self.limiter.acquire(f"address:{principal.address}", self.anonymous_rpm, 0)
            return {"x-ratelimit-limit-requests": str(self.anonymous_rpm),
                    "x-ratelimit-remaining-requests": str(max(remaining.requests, 0))}
        remaining: Remaining = self.limiter.acquire(key.key_id, key.requests_per_minute, key.tokens_per_minute)
        if self.usage is not None:
            self.usage.add(key.key_id, requests=1)
        headers = {}
        if key.requests_per_minute > 0:
            headers["x-ratelimit-limit-requests"] = str(key.requests_per_minute)
            headers["x-ratelimit-remaining-requests"] = str(max(remaining.requests, 0))
        if key.tokens_per_minute > 0:
            headers["x-ratelimit-limit-tokens"] = str(key.tokens_per_minute)
            headers["x-ratelimit-remaining-tokens"] = str(max(remaining.tokens, 0))
        return headers

    def usage_recorder(self, principal: Principal):
        """A callback counting a finished request's tokens against the caller's key: its usage
        and its tokens-per-minute window (None without a key or anything to count)."""
        key = principal.key
        if key is None or (key.tokens_per_minute <= 0 and self.usage is None):
            return None

        def record(tokens: int) -> None:
            if self.usage is not None:
                self.usage.add(key.key_id, tokens=tokens)
            self.limiter.record_tokens(key.key_id, tokens, key.tokens_per_minute)

        return record

    def admin(self, request: Request) -> Principal:
        """The caller of an admin endpoint: 401 without a valid key, 403 with a non-admin key
        (only when the gateway is secured: ``require_api_key`` or ``auth_token``); an unsecured
        gateway admits loopback callers only (403 ``loopback_only`` for any other peer)."""
        if not self.secured:
            host = request.client.host if request.client else None
            if not is_loopback(host):
                raise APIError(403, f"Admin endpoints of a gateway without a service token or required API keys "
                               f"are open to loopback callers only (this call came from {host}); set "
                               "SWIFTMESH_AUTH_TOKEN or SWIFTMESH_GATEWAY__REQUIRE_API_KEY and use an admin key.",
                               code="loopback_only")
            return Principal(service=True)
        principal = self.principal(request, required=True)
        if not principal.admin:
            raise APIError(403, "This endpoint needs an admin API key or the service token.",
                           code="insufficient_permissions")
        return principal
