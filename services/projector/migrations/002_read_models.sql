-- The full read models. The balances-only table of 001 is replaced: read models are rebuilt
-- from the log, so the checkpoints are reset and the projector starts again from offset 0.
DROP TABLE member_balances;
DELETE FROM projector_checkpoints;

-- Applied-batch statistics per partition, written with the checkpoint, exported on /metrics.
ALTER TABLE projector_checkpoints
    ADD COLUMN batches bigint NOT NULL DEFAULT 0,
    ADD COLUMN records bigint NOT NULL DEFAULT 0,
    ADD COLUMN apply_seconds double precision NOT NULL DEFAULT 0;

-- One row per stream of the log (members, and the program's own stream). A stream with no
-- enrolment (only rejected commands) has enrolled_at NULL and is not a member.
CREATE TABLE members (
    member_id text PRIMARY KEY,
    -- The last applied event sequence: an event at or below it is a duplicate.
    last_sequence bigint NOT NULL,
    last_event_at timestamptz NOT NULL,
    enrolled_at timestamptz,
    available bigint NOT NULL DEFAULT 0,
    pending bigint NOT NULL DEFAULT 0,
    lifetime_earned bigint NOT NULL DEFAULT 0,
    redeemed bigint NOT NULL DEFAULT 0,
    expired bigint NOT NULL DEFAULT 0,
    reversed bigint NOT NULL DEFAULT 0,
    adjusted bigint NOT NULL DEFAULT 0,
    tier text,
    tier_changed_at timestamptz,
    next_evaluation_at timestamptz,
    last_purchase_at timestamptz,
    purchases bigint NOT NULL DEFAULT 0,
    spend_minor bigint NOT NULL DEFAULT 0,
    refunded_minor bigint NOT NULL DEFAULT 0
);
CREATE INDEX members_tier ON members (tier, member_id) WHERE enrolled_at IS NOT NULL;
CREATE INDEX members_last_purchase ON members (last_purchase_at) WHERE enrolled_at IS NOT NULL;

-- Open point lots; pending ones have matures_at. A lot used up is deleted.
CREATE TABLE member_lots (
    member_id text NOT NULL,
    lot_id text NOT NULL,
    points bigint NOT NULL,
    expires_at timestamptz,
    matures_at timestamptz,
    PRIMARY KEY (member_id, lot_id)
);

-- Purchases, for the rolling qualifying window and for activity counts per period.
CREATE TABLE member_purchases (
    member_id text NOT NULL,
    purchase_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    amount_minor bigint NOT NULL,
    refunded_minor bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (member_id, purchase_id)
);
CREATE INDEX member_purchases_occurred ON member_purchases (occurred_at, member_id);
CREATE INDEX member_purchases_member_time ON member_purchases (member_id, occurred_at);

-- Spend per item category, for the favourite category.
CREATE TABLE member_categories (
    member_id text NOT NULL,
    category text NOT NULL,
    spend_minor bigint NOT NULL,
    purchases bigint NOT NULL,
    PRIMARY KEY (member_id, category)
);

CREATE TABLE tier_history (
    member_id text NOT NULL,
    sequence bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    from_tier text NOT NULL,
    to_tier text NOT NULL,
    reason text NOT NULL,
    qualifying_spend_minor bigint NOT NULL,
    purchase_count bigint NOT NULL,
    note text,
    actor text,
    PRIMARY KEY (member_id, sequence)
);

-- Every member event, with what it did to the balance: history, activity and as_of queries.
CREATE TABLE member_events (
    member_id text NOT NULL,
    sequence bigint NOT NULL,
    type text NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL,
    available bigint NOT NULL,
    pending bigint NOT NULL,
    lifetime_earned bigint NOT NULL,
    redeemed bigint NOT NULL,
    expired bigint NOT NULL,
    reversed bigint NOT NULL,
    amount_minor bigint,
    reference text,
    event json NOT NULL,
    PRIMARY KEY (member_id, sequence)
);

-- Program totals per UTC day of business time; periods and running totals are sums of days.
CREATE TABLE program_days (
    day date PRIMARY KEY,
    enrolments bigint NOT NULL DEFAULT 0,
    purchases bigint NOT NULL DEFAULT 0,
    spend_minor bigint NOT NULL DEFAULT 0,
    refunded_minor bigint NOT NULL DEFAULT 0,
    points_earned bigint NOT NULL DEFAULT 0,
    points_redeemed bigint NOT NULL DEFAULT 0,
    points_expired bigint NOT NULL DEFAULT 0,
    points_reversed bigint NOT NULL DEFAULT 0,
    points_adjusted bigint NOT NULL DEFAULT 0,
    -- Change in outstanding points (available + pending) over the day.
    points_outstanding bigint NOT NULL DEFAULT 0,
    promotions bigint NOT NULL DEFAULT 0,
    demotions bigint NOT NULL DEFAULT 0
);

-- Members entering (+1) and leaving (-1) each tier per day.
CREATE TABLE program_tier_days (
    day date NOT NULL,
    tier text NOT NULL,
    members bigint NOT NULL,
    PRIMARY KEY (day, tier)
);

CREATE TABLE program_rules (
    version integer PRIMARY KEY,
    fingerprint text NOT NULL,
    rules jsonb NOT NULL,
    occurred_at timestamptz NOT NULL
);

-- Events the projector could not read (unknown type, malformed), counted rather than fatal.
CREATE TABLE projector_skips (
    topic text NOT NULL,
    reason text NOT NULL,
    events bigint NOT NULL,
    PRIMARY KEY (topic, reason)
);
