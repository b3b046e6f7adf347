-- API keys: the secret is stored as its SHA-256 only. Outside the read models, so that a
-- replay or a schema switch never touches them.
CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    name text NOT NULL,
    scopes text[] NOT NULL,
    secret_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
