-- cvm-verifier schema v3 (SQLite). Keep in step with ../postgres/0003_session_token_digest.sql.

-- SHA-256 (hex) of the attestation token issued to an attested session: a key release
-- presenting that token is checked against it (see verifier::crypto::token). NULL for
-- sessions attested before v3, whose tokens are checked by their signature.
ALTER TABLE kbs_sessions ADD COLUMN token_sha256 TEXT;
