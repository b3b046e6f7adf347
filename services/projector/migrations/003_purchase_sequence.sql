-- A purchase id can come back once the ledger has forgotten the first purchase (past the refund
-- and qualifying windows): purchases are keyed by the event that recorded them. The read models
-- are rebuilt from the log.
TRUNCATE members, member_lots, member_purchases, member_categories, tier_history, member_events,
    program_days, program_tier_days, program_rules, projector_skips;
DELETE FROM projector_checkpoints;

ALTER TABLE member_purchases DROP CONSTRAINT member_purchases_pkey;
ALTER TABLE member_purchases ADD COLUMN sequence bigint NOT NULL;
ALTER TABLE member_purchases ADD PRIMARY KEY (member_id, sequence);
CREATE INDEX member_purchases_id ON member_purchases (member_id, purchase_id, sequence);

-- Recency segments select on this expression.
CREATE INDEX members_recency ON members ((coalesce(last_purchase_at, enrolled_at)), member_id)
    WHERE enrolled_at IS NOT NULL;
