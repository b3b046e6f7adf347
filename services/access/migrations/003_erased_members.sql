-- Members whose personal data was erased: no data key is ever made for them again. The erase id
-- makes a repeated erasure the same command.
CREATE TABLE erased_members (
    member_id text PRIMARY KEY,
    erase_id text NOT NULL,
    erased_at timestamptz NOT NULL DEFAULT now()
);
