"""API keys: stored as SHA-256 hashes, compared in constant time, never logged.

The client identity used for fairness is the configured client whose key hash matches the presented key; nothing
the client sends besides the key (``user`` field, headers) is looked at.
"""

from __future__ import annotations

import hashlib
import hmac

from serving.daemon.config import ClientConfig


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key, as the config stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None: absent or another scheme)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class KeyRing:
    """Who a key belongs to. Every stored hash is compared (no early exit), each with hmac.compare_digest."""

    def __init__(self, clients: list[ClientConfig], admin_hashes: list[str]):
        self._clients = [(bytes.fromhex(c.key_sha256), c) for c in clients]
        self._admin = [bytes.fromhex(h) for h in admin_hashes]

    def client(self, authorization: str | None) -> ClientConfig | None:
        token = bearer(authorization)
        digest = hashlib.sha256((token or "").encode("utf-8")).digest()
        found = None
        for h, c in self._clients:
            if hmac.compare_digest(h, digest) and token is not None:
                found = c
        return found

    def is_admin(self, authorization: str | None) -> bool:
        token = bearer(authorization)
        digest = hashlib.sha256((token or "").encode("utf-8")).digest()
        ok = False
        for h in self._admin:
            ok |= hmac.compare_digest(h, digest)
        return ok and token is not None
