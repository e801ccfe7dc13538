"""The one page-token scheme of every List method (Google AIP-158).

A token is opaque to callers: URL-safe base64 of ``{"o": offset, "q": fingerprint}``, where the
fingerprint is a short hash of the query's filters. A token is only valid for the query that made
it; anything else (garbage, a negative offset, another query's token) raises
:class:`~swiftmesh.runtime.errors.InvalidArgument` naming ``page_token``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from swiftmesh.runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    """Where one page starts (``offset``, rows) and how many rows it holds (``size``)."""

    offset: int
    size: int
    fingerprint: str

    def next_token(self, more: bool) -> str:
        """The token of the page after this one, or "" when ``more`` is False (the last page)."""
        if not more:
            return ""
        raw = json.dumps({"o": self.offset + self.size, "q": self.fingerprint}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def fingerprint(query: Any) -> str:
    """A 12-hex hash of the query's filters (anything JSON can encode; lists are kept in order)."""
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:12]


def page(page_size: int, page_token: str, query: Any = None, *, default: int = DEFAULT_PAGE_SIZE) -> Page:
    """Decode a List request's ``page_size`` and ``page_token``.

    Args:
        page_size: rows wanted; 0 means ``default``; capped at :data:`MAX_PAGE_SIZE` (1000).
        page_token: "" for the first page, else a token from :meth:`Page.next_token` of the same query.
        query: the request's filters; a token made for other filters is refused.
        default: page size when ``page_size`` is 0 (50 unless the method says otherwise).

    Returns:
        the :class:`Page` to read.

    Raises:
        InvalidArgument: a negative ``page_size`` or a token that is not from this query.
    """
    if page_size < 0:
        raise InvalidArgument(f"page_size must not be negative (got {page_size})",
                              field_violations=[("page_size", f"negative: {page_size}")])
    size = min(page_size or default, MAX_PAGE_SIZE)
    fp = fingerprint(query)
    offset = 0
    if page_token:
        try:
            padded = page_token + "=" * (-len(page_token) % 4)
            tok = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
            offset = int(tok["o"])
            if tok["q"] != fp or offset < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise InvalidArgument(
                "page_token is invalid or belongs to a different query",
                field_violations=[("page_token", "not a token from a previous page of this query")],
                reason="INVALID_PAGE_TOKEN",
            ) from None
    return Page(offset, size, fp)
