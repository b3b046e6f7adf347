-- Members' data keys, wrapped by the master key (AES-256-GCM, member id as associated data).
-- Deleting a row is the erasure of that member's personal data: every ciphertext of it, in
-- every topic, backup and read model, becomes unreadable. Never part of a replay.
CREATE TABLE member_keys (
    member_id text PRIMARY KEY,
    key_id text NOT NULL UNIQUE,
    wrapped bytea NOT NULL,
    master_key_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
