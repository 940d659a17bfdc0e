-- cvm-verifier schema v2 (SQLite). Keep in step with ../postgres/0002_audit_head_follows.sql.

-- The chain head follows every appended record, in the append's transaction: an append
-- is "UPDATE audit_head SET seq = seq + 1 ... RETURNING seq, hash" then this INSERT.
CREATE TRIGGER audit_head_follows AFTER INSERT ON audit_log
BEGIN UPDATE audit_head SET hash = NEW.hash WHERE id = 1; END;
