-- cvm-verifier schema v5 (SQLite). Keep in step with ../postgres/0005_keyed_audit_chain.sql.

-- The keyed audit chain (see verifier::store::audit). The audit key itself is a sealed
-- row of signing_keys (id 'audit-hmac-sha256'), created by the first verifier of this
-- version together with the transition record; records before it keep the unkeyed rule.

-- The last checkpoint (record and time), read by each append in its head update.
ALTER TABLE audit_head ADD COLUMN cp_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_head ADD COLUMN cp_ts BIGINT NOT NULL DEFAULT 0;

-- Signed checkpoints {seq, mac, ts}: an ES256 JWS under the token key.
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    ts  BIGINT NOT NULL,
    mac TEXT NOT NULL,
    jws TEXT NOT NULL
);

-- Append-only, like the log.
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
