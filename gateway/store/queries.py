"""Every SQL statement the running gateway and its CLI issue, by name; the schema lives in sql/."""

PING = "SELECT 1"

FIND_KEY = """
SELECT k.id AS key_id, k.name AS key_name, t.id::text AS tenant_id, t.name AS tenant_name,
       k.secret_hash, k.previous_secret_hash, k.previous_secret_expires_at, k.expires_at,
       (k.revoked_at IS NOT NULL) AS revoked, (t.disabled_at IS NOT NULL) AS tenant_disabled,
       k.rpm AS key_rpm, k.tpm AS key_tpm, k.concurrent AS key_concurrent,
       t.rpm AS tenant_rpm, t.tpm AS tenant_tpm, t.concurrent AS tenant_concurrent,
       k.budget_daily_tokens AS key_daily, k.budget_monthly_tokens AS key_monthly,
       k.budget_total_tokens AS key_total, t.budget_daily_tokens AS tenant_daily,
       t.budget_monthly_tokens AS tenant_monthly, t.budget_total_tokens AS tenant_total,
       k.allow_all_models AS key_allow_all, k.allowed_models AS key_allowed,
       t.allow_all_models AS tenant_allow_all, t.allowed_models AS tenant_allowed
FROM gateway.api_keys k JOIN gateway.tenants t ON t.id = k.tenant_id
WHERE k.id = %(key_id)s
"""

LISTEN_PRINCIPALS = "LISTEN gateway_principals"

# Per-key rows only; a tenant's usage is the sum over its keys.
ADD_USAGE = """
INSERT INTO gateway.usage_ledger AS u
    (tenant_id, key_id, period, period_start, prompt_tokens, completion_tokens, requests)
VALUES (%(tenant_id)s, %(key_id)s, %(period)s, %(period_start)s, %(prompt_tokens)s,
        %(completion_tokens)s, %(requests)s)
ON CONFLICT (key_id, period, period_start) DO UPDATE SET
    prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
    requests = u.requests + EXCLUDED.requests,
    updated_at = now()
"""

# What a key and its tenant used in the current periods: seeds for missing Redis counters.
USAGE_NOW = """
SELECT
  coalesce(sum(tokens) FILTER (WHERE mine AND period = 'day'), 0)::bigint AS key_day,
  coalesce(sum(tokens) FILTER (WHERE mine AND period = 'month'), 0)::bigint AS key_month,
  coalesce(sum(tokens) FILTER (WHERE mine AND period = 'total'), 0)::bigint AS key_total,
  coalesce(sum(tokens) FILTER (WHERE period = 'day'), 0)::bigint AS tenant_day,
  coalesce(sum(tokens) FILTER (WHERE period = 'month'), 0)::bigint AS tenant_month,
  coalesce(sum(tokens) FILTER (WHERE period = 'total'), 0)::bigint AS tenant_total
FROM (
  SELECT key_id = %(key_id)s AS mine, period, prompt_tokens + completion_tokens AS tokens
  FROM gateway.usage_ledger
  WHERE tenant_id = %(tenant_id)s
    AND ((period = 'day' AND period_start = %(day)s)
      OR (period = 'month' AND period_start = %(month)s)
      OR (period = 'total' AND period_start = '1970-01-01'))
) AS current_usage
"""

UPDATE_KEY_HASH = """
UPDATE gateway.api_keys SET secret_hash = %(secret_hash)s
WHERE id = %(key_id)s AND secret_hash = %(old_hash)s
"""

LISTEN_REVOCATIONS = "LISTEN gateway_revocations"

CREATE_TENANT = """
INSERT INTO gateway.tenants (name, allow_all_models) VALUES (%(name)s, %(allow_all_models)s)
RETURNING id::text AS id, name, created_at, allow_all_models
"""

LIST_TENANTS = """
SELECT t.id::text AS id, t.name, t.created_at,
       (SELECT count(*) FROM gateway.api_keys k
        WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS active_keys
FROM gateway.tenants t ORDER BY t.name
"""

FIND_TENANT_ID = "SELECT id FROM gateway.tenants WHERE name = %(name)s"

CREATE_KEY = """
INSERT INTO gateway.api_keys (id, tenant_id, name, secret_hash, expires_at)
VALUES (%(key_id)s, %(tenant_id)s, %(name)s, %(secret_hash)s, %(expires_at)s)
RETURNING created_at
"""

LIST_KEYS = """
SELECT k.id AS key_id, k.name, t.name AS tenant, k.created_at, k.expires_at, k.revoked_at
FROM gateway.api_keys k JOIN gateway.tenants t ON t.id = k.tenant_id
WHERE %(tenant)s::text IS NULL OR t.name = %(tenant)s::text
ORDER BY t.name, k.created_at, k.id
"""

REVOKE_KEY = """
INSERT INTO gateway.revocations (key_id, reason)
SELECT id, %(reason)s FROM gateway.api_keys WHERE id = %(key_id)s AND revoked_at IS NULL
RETURNING key_id
"""

KEY_EXISTS = "SELECT revoked_at FROM gateway.api_keys WHERE id = %(key_id)s"

# Limits and budgets as stored, for `gateway limits|budgets|usage`: NULL inherits (limits) or
# is unlimited (budgets).
KEY_QUOTAS = """
SELECT t.id::text AS tenant_id, t.name AS tenant_name, k.id AS key_id, k.name AS key_name,
       k.rpm AS key_rpm, k.tpm AS key_tpm, k.concurrent AS key_concurrent,
       k.budget_daily_tokens AS key_daily, k.budget_monthly_tokens AS key_monthly,
       k.budget_total_tokens AS key_total,
       t.rpm AS tenant_rpm, t.tpm AS tenant_tpm, t.concurrent AS tenant_concurrent,
       t.budget_daily_tokens AS tenant_daily, t.budget_monthly_tokens AS tenant_monthly,
       t.budget_total_tokens AS tenant_total
FROM gateway.api_keys k JOIN gateway.tenants t ON t.id = k.tenant_id
WHERE (%(tenant)s::text IS NULL OR t.name = %(tenant)s::text)
  AND (%(key_id)s::text IS NULL OR k.id = %(key_id)s::text)
ORDER BY t.name, k.created_at, k.id
"""

# The same shape for tenants alone: the key columns are NULL.
TENANT_QUOTAS = """
SELECT t.id::text AS tenant_id, t.name AS tenant_name, NULL::text AS key_id,
       NULL::text AS key_name, NULL::integer AS key_rpm, NULL::integer AS key_tpm,
       NULL::integer AS key_concurrent, NULL::bigint AS key_daily, NULL::bigint AS key_monthly,
       NULL::bigint AS key_total,
       t.rpm AS tenant_rpm, t.tpm AS tenant_tpm, t.concurrent AS tenant_concurrent,
       t.budget_daily_tokens AS tenant_daily, t.budget_monthly_tokens AS tenant_monthly,
       t.budget_total_tokens AS tenant_total
FROM gateway.tenants t
WHERE %(tenant)s::text IS NULL OR t.name = %(tenant)s::text
ORDER BY t.name
"""

# Each column changes only when its `*_set` flag is true; then a NULL value clears it.
_SET_QUOTAS = """
    rpm = CASE WHEN %(rpm_set)s THEN %(rpm)s::integer ELSE rpm END,
    tpm = CASE WHEN %(tpm_set)s THEN %(tpm)s::integer ELSE tpm END,
    concurrent = CASE WHEN %(concurrent_set)s THEN %(concurrent)s::integer ELSE concurrent END,
    budget_daily_tokens =
        CASE WHEN %(daily_set)s THEN %(daily)s::bigint ELSE budget_daily_tokens END,
    budget_monthly_tokens =
        CASE WHEN %(monthly_set)s THEN %(monthly)s::bigint ELSE budget_monthly_tokens END,
    budget_total_tokens =
        CASE WHEN %(total_set)s THEN %(total)s::bigint ELSE budget_total_tokens END
"""

SET_KEY_QUOTAS = f"""
UPDATE gateway.api_keys SET{_SET_QUOTAS}WHERE id = %(key_id)s
RETURNING 'k:' || id AS subject
"""

SET_TENANT_QUOTAS = f"""
UPDATE gateway.tenants SET{_SET_QUOTAS}WHERE name = %(tenant)s
RETURNING 't:' || id::text AS subject
"""

# Delivered at commit, so listeners never reload a principal before the change is visible.
NOTIFY_PRINCIPALS = "SELECT pg_notify('gateway_principals', %(subject)s)"

# Every key's ledger rows of the current periods, for whole tenants: a tenant's usage is the
# sum over all its keys, including keys deleted since.
LEDGER_NOW = """
SELECT tenant_id::text AS tenant_id, key_id, period,
       prompt_tokens + completion_tokens AS used, requests
FROM gateway.usage_ledger
WHERE tenant_id = ANY(%(tenant_ids)s::uuid[])
  AND ((period = 'day' AND period_start = %(day)s)
    OR (period = 'month' AND period_start = %(month)s)
    OR (period = 'total' AND period_start = '1970-01-01'))
"""

# Model access as stored, for `gateway models`: a key's NULL inherits its tenant's value.
KEY_MODELS = """
SELECT t.id::text AS tenant_id, t.name AS tenant_name, k.id AS key_id,
       k.allow_all_models AS key_allow_all, k.allowed_models AS key_allowed,
       t.allow_all_models AS tenant_allow_all, t.allowed_models AS tenant_allowed
FROM gateway.api_keys k JOIN gateway.tenants t ON t.id = k.tenant_id
WHERE k.id = %(key_id)s::text
"""

# A key's new setting is decided from its tenant's as well, so neither may change meanwhile.
KEY_MODELS_FOR_UPDATE = KEY_MODELS + "FOR UPDATE OF k FOR SHARE OF t\n"

# The same shape for a tenant alone: the key columns are NULL.
TENANT_MODELS = """
SELECT t.id::text AS tenant_id, t.name AS tenant_name, NULL::text AS key_id,
       NULL::boolean AS key_allow_all, NULL::text[] AS key_allowed,
       t.allow_all_models AS tenant_allow_all, t.allowed_models AS tenant_allowed
FROM gateway.tenants t
WHERE t.name = %(tenant)s::text
"""

TENANT_MODELS_FOR_UPDATE = TENANT_MODELS + "FOR UPDATE\n"

SET_KEY_MODELS = """
UPDATE gateway.api_keys
SET allow_all_models = %(allow_all)s::boolean, allowed_models = %(allowed)s::text[]
WHERE id = %(key_id)s::text
RETURNING 'k:' || id AS subject
"""

SET_TENANT_MODELS = """
UPDATE gateway.tenants
SET allow_all_models = %(allow_all)s::boolean, allowed_models = %(allowed)s::text[]
WHERE id = %(tenant_id)s::uuid
RETURNING 't:' || id::text AS subject
"""
