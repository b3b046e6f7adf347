-- Read models that reconcile and follow the program's calendar (issue 14). The new columns need
-- every event again: the read models are rebuilt from the log.
TRUNCATE members, member_lots, member_purchases, member_categories, tier_history, member_events,
    program_days, program_tier_days, program_rules, projector_skips, member_profiles;
DELETE FROM projector_checkpoints;

-- lifetime_earned + adjusted - redeemed - expired - reversed = available + pending; debt is what
-- reversals found already spent and later credits have not repaid yet (available counts it).
ALTER TABLE members ADD COLUMN debt bigint NOT NULL DEFAULT 0;
ALTER TABLE member_events
    ADD COLUMN adjusted bigint NOT NULL DEFAULT 0,
    ADD COLUMN debt bigint NOT NULL DEFAULT 0;

-- Program totals per UTC quarter hour of business time, replacing per-UTC-day ones: the read API
-- sums them into days and months of the program's time zone (the rule in force), and every time
-- zone in use is a whole number of quarter hours from UTC.
DROP TABLE program_days, program_tier_days;
CREATE TABLE program_quarter_hours (
    starts_at timestamptz PRIMARY KEY,
    enrolments bigint NOT NULL DEFAULT 0,
    purchases bigint NOT NULL DEFAULT 0,
    spend_minor bigint NOT NULL DEFAULT 0,
    refunded_minor bigint NOT NULL DEFAULT 0,
    points_earned bigint NOT NULL DEFAULT 0,
    points_redeemed bigint NOT NULL DEFAULT 0,
    points_expired bigint NOT NULL DEFAULT 0,
    points_reversed bigint NOT NULL DEFAULT 0,
    points_adjusted bigint NOT NULL DEFAULT 0,
    -- Change in outstanding points (available + pending), debts netted.
    points_outstanding bigint NOT NULL DEFAULT 0,
    -- Change in the points owed to members: the sum of balances above zero (debts not netted).
    points_liability bigint NOT NULL DEFAULT 0,
    promotions bigint NOT NULL DEFAULT 0,
    demotions bigint NOT NULL DEFAULT 0
);
-- Members entering (+1) and leaving (-1) each tier per quarter hour.
CREATE TABLE program_tier_quarter_hours (
    starts_at timestamptz NOT NULL,
    tier text NOT NULL,
    members bigint NOT NULL,
    PRIMARY KEY (starts_at, tier)
);

-- Recency counts from the last purchase not refunded in full; members without one are `new`.
ALTER TABLE members ADD COLUMN last_kept_purchase_at timestamptz;
DROP INDEX members_recency;
CREATE INDEX members_recency ON members (last_kept_purchase_at, member_id) WHERE enrolled_at IS NOT NULL;

-- Item spend per category of each purchase: a refund takes its share back from each, so the
-- favourite category is net of refunds. member_categories.spend_minor is now net of them
-- (`purchases` still counts the purchases that named the category).
CREATE TABLE member_purchase_categories (
    member_id text NOT NULL,
    sequence bigint NOT NULL,
    category text NOT NULL,
    spend_minor bigint NOT NULL,
    PRIMARY KEY (member_id, sequence, category)
);
