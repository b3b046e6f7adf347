-- Recency segments use members_recency (003); nothing reads last_purchase_at alone, and this
-- index cost an entry on every member row the projector writes.
DROP INDEX IF EXISTS members_last_purchase;
