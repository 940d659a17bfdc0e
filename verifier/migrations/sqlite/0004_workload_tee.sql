-- cvm-verifier schema v4 (SQLite). Keep in step with ../postgres/0004_workload_tee.sql.

-- Each workload is bound to one TEE: a guest of another TEE never matches it. SNP
-- MEASUREMENT and TDX MRTD are both 48 bytes, so the TEE of an existing workload cannot
-- be inferred: existing rows keep NULL ("unbound") and match no guest until an admin
-- sets their TEE (PUT /admin/v1/workloads/{name} with "tee"). Fail closed.
ALTER TABLE workloads ADD COLUMN tee TEXT CHECK (tee IN ('snp', 'tdx'));
