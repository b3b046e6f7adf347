"""Settings of access control (env LOYALTY_*), read by both HTTP services and the `keys` CLI."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.personal_data.crypto import MasterKey


class AccessSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    database_url: str = "postgresql://loyalty@127.0.0.1:15432/loyalty"
    # A key holding every scope, for first set-up and tests; `make run` generates one when unset.
    bootstrap_admin_key: SecretStr | None = None
    # How long a verified key is trusted before it is looked up again (a revocation takes this long).
    key_cache_s: float = 5.0
    # The largest request body either HTTP API reads; past it, 413.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # `<id>:<base64 of 32 bytes>`: wraps members' data keys. `make run` makes one when unset.
    master_key: SecretStr | None = None
    # Comma-separated earlier master keys, still able to unwrap until `loyalty datakeys rewrap`.
    previous_master_keys: SecretStr | None = None

    def master_keys(self) -> tuple[MasterKey | None, dict[str, MasterKey]]:
        """The current master key (None when unset) and every configured one by id."""
        text = self.master_key.get_secret_value() if self.master_key else ""
        current = MasterKey.parse(text) if text else None
        previous = (
            self.previous_master_keys.get_secret_value().split(",") if self.previous_master_keys else []
        )
        every = {key.key_id: key for key in (MasterKey.parse(text) for text in previous if text.strip())}
        if current is not None:
            every[current.key_id] = current
        return current, every
