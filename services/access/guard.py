"""The HTTP edge of access control: a bearer key per request, its scopes checked per route."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import AsyncConnectionPool

from services.access import store
from services.access.keys import BOOTSTRAP_KEY_ID, SCOPES, Principal, Scope, matches, parse, same_token
from services.access.settings import AccessSettings
from services.migrations import migrate, schema_options
from services.problems import Problem

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer lk_<id>_<secret>`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
CACHE_LIMIT = 10_000
REFUSED_S = 1.0


def _unauthenticated(detail: str) -> Problem:
    problem = Problem(401, "unauthenticated", "An API key is needed", detail)
    problem.headers["WWW-Authenticate"] = "Bearer"
    return problem


class Guard:
    """Verifies keys against Postgres, trusting a verified key for `key_cache_s` seconds."""

    def __init__(self, settings: AccessSettings) -> None:
        self._settings = settings
        self._bootstrap = (
            settings.bootstrap_admin_key.get_secret_value() if settings.bootstrap_admin_key else None
        )
        self.pool = AsyncConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=4,
            # Admission bounds the requests in flight; a longer wait means Postgres is in trouble.
            timeout=2.0,
            open=False,
            kwargs={"autocommit": True, "options": schema_options(store.PRIVATE_SCHEMA)},
        )
        self._verified: dict[str, tuple[float, Principal]] = {}
        self._refused: dict[str, float] = {}

    async def open(self) -> None:
        await asyncio.to_thread(migrate, self._settings.database_url, store.PRIVATE_SCHEMA, "services.access")
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()

    async def principal(self, token: str) -> Principal | None:
        if self._bootstrap is not None and same_token(token, self._bootstrap):
            return Principal(BOOTSTRAP_KEY_ID, frozenset(SCOPES))
        cache_key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._verified.get(cache_key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if self._refused.get(cache_key, 0.0) > time.monotonic():
            return None
        parsed = parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        async with self.pool.connection() as conn:
            found = await store.active(conn, key_id)
        if found is None or not matches(secret, found[1]):
            # A wrong token is not looked up again for a moment: guessing costs no database load.
            if len(self._refused) >= CACHE_LIMIT:
                self._refused.clear()
            self._refused[cache_key] = time.monotonic() + REFUSED_S
            return None
        principal = Principal(key_id, frozenset(found[0]))
        if len(self._verified) >= CACHE_LIMIT:
            self._verified.clear()
        self._verified[cache_key] = (time.monotonic() + self._settings.key_cache_s, principal)
        return principal

    def require(self, scope: Scope) -> Callable[[Credentials], Awaitable[Principal]]:
        """A dependency: the caller's principal, if its key holds `scope`; else 401 or 403."""

        async def check(credentials: Credentials) -> Principal:
            if credentials is None:
                raise _unauthenticated("send Authorization: Bearer <key>")
            principal = await self.principal(credentials.credentials)
            if principal is None:
                raise _unauthenticated("the key is unknown or revoked")
            if scope not in principal.scopes:
                raise Problem(403, "forbidden", "The key may not do this", f"needs the {scope!r} scope")
            return principal

        check.scope = scope  # type: ignore[attr-defined]
        return check
