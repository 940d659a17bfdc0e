-- cvm-verifier schema v6 (PostgreSQL). Keep in step with ../sqlite/0006_collateral_cache.sql.

-- The collateral cache (verifier::collateral): AMD KDS and Intel PCS/PCCS responses, one
-- row per item, shared by every replica on the same database. `body` is the response
-- body (base64), `issuer_chain` the PEM issuer chain of the response headers (Intel),
-- `expires_at` the item's nextUpdate / notAfter (Unix seconds): past it the item is
-- never used. Nothing here is trusted: every item is verified at use.
CREATE TABLE collateral_cache (
    key          TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    body         TEXT NOT NULL,
    issuer_chain TEXT,
    fetched_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
