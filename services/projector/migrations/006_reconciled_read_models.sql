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
