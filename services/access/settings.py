"""Settings of access control (env LOYALTY_*), read by both HTTP services and the `keys` CLI."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AccessSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    database_url: str = "postgresql://loyalty@127.0.0.1:15432/loyalty"
    # A key holding every scope, for first set-up and tests; `make run` generates one when unset.
    bootstrap_admin_key: SecretStr | None = None
    # How long a verified key is trusted before it is looked up again (a revocation takes this long).
    key_cache_s: float = 5.0
