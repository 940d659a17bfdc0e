-- cvm-verifier schema v2 (PostgreSQL). Keep in step with ../sqlite/0002_audit_head_follows.sql.

-- The chain head follows every appended record, in the append's transaction: an append
-- is "UPDATE audit_head SET seq = seq + 1 ... RETURNING seq, hash" then this INSERT.
CREATE FUNCTION audit_head_follow() RETURNS trigger AS $$
BEGIN
    UPDATE audit_head SET hash = NEW.hash WHERE id = 1;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_head_follows AFTER INSERT ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_head_follow();
