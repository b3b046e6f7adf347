-- Where each projector instance is in loyalty.events.v1, written in the same transaction as
-- the read models it produced.
CREATE TABLE projector_checkpoints (
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

CREATE TABLE member_balances (
    member_id text PRIMARY KEY,
    available bigint NOT NULL DEFAULT 0,
    pending bigint NOT NULL DEFAULT 0,
    lifetime_earned bigint NOT NULL DEFAULT 0,
    redeemed bigint NOT NULL DEFAULT 0,
    expired bigint NOT NULL DEFAULT 0,
    reversed bigint NOT NULL DEFAULT 0,
    -- The member's last applied event sequence: an event at or below it is a duplicate.
    last_sequence bigint NOT NULL,
    last_event_at timestamptz NOT NULL
);
