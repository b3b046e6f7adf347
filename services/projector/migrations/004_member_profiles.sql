-- Members' profiles as the log has them: ciphertext per field and the data key's id, never clear
-- text. Erasure empties the fields; without the key they could not be read anyway.
CREATE TABLE member_profiles (
    member_id text PRIMARY KEY,
    key_id text,
    fields jsonb NOT NULL DEFAULT '{}',
    erased boolean NOT NULL DEFAULT false
);
