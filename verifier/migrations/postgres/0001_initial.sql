-- cvm-verifier schema v1 (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql.
-- Times are Unix seconds (BIGINT) so that queries are portable across backends.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'auditor')),
    token_id    TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL,
    totp_sealed BYTEA,
    created_at  BIGINT NOT NULL,
    disabled    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE workloads (
    name       TEXT PRIMARY KEY,
    policy     TEXT NOT NULL,
    resources  TEXT NOT NULL,
    revoked    BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE resources (
    path       TEXT PRIMARY KEY,
    sealed     BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    id         TEXT PRIMARY KEY,
    sealed     BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE kbs_sessions (
    id           TEXT PRIMARY KEY,
    tee          TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    workload_hint TEXT,
    state        TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    workload     TEXT,
    tee_pubkey   TEXT,
    inventory_id TEXT,
    trust        TEXT
);
CREATE INDEX kbs_sessions_expires ON kbs_sessions (expires_at);

CREATE TABLE inventory (
    id           TEXT PRIMARY KEY,
    workload     TEXT NOT NULL,
    tee          TEXT NOT NULL,
    platform_id  TEXT NOT NULL,
    measurement  TEXT NOT NULL,
    trust        TEXT NOT NULL,
    first_seen   BIGINT NOT NULL,
    last_seen    BIGINT NOT NULL,
    attestations BIGINT NOT NULL,
    revoked      BIGINT NOT NULL DEFAULT 0,
    UNIQUE (workload, tee, platform_id, measurement)
);

CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    ts        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    client    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

-- The chain head: one row, updated in the same transaction as each append. Appenders
-- update it first, which serializes them (row lock on PostgreSQL, write lock on SQLite).
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only: the database refuses updates and deletes of audit records.
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
