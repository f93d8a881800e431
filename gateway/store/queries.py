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
       t.allow_all_models AS tenant_allow_all, t.allowed_models AS tenant_allowed,
       k.prompt_log, k.prompt_log_retention_days, t.queue_weight
FROM gateway.api_keys k JOIN gateway.tenants t ON t.id = k.tenant_id
WHERE k.id = %(key_id)s
"""

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

# Column order is the order of gateway.audit.AuditRow's fields.
COPY_AUDIT = """
COPY gateway.audit_log (ts, request_id, tenant_id, key_id, client_ip, method, route, model,
                        backend, status, error_code, prompt_tokens, completion_tokens, ttfb_ms,
                        duration_ms, streamed) FROM STDIN
"""

# Column order is the order of gateway.audit.PromptRow's fields.
COPY_PROMPTS = """
COPY gateway.prompt_log (ts, request_id, tenant_id, key_id, model, request, response, expires_at)
FROM STDIN
"""

UPDATE_KEY_HASH = """
UPDATE gateway.api_keys SET secret_hash = %(secret_hash)s
WHERE id = %(key_id)s AND secret_hash = %(old_hash)s
"""

CREATE_TENANT = """
INSERT INTO gateway.tenants (name, allow_all_models) VALUES (%(name)s, %(allow_all_models)s)
RETURNING id::text AS id, name, created_at, allow_all_models
"""

LIST_TENANTS = """
SELECT t.id::text AS id, t.name, t.created_at, t.queue_weight,
       (SELECT count(*) FROM gateway.api_keys k
        WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS active_keys
FROM gateway.tenants t ORDER BY t.name
"""

# The notice makes every gateway drop the tenant's keys from its own cache at commit.
SET_QUEUE_WEIGHT = """
WITH changed AS (
    UPDATE gateway.tenants SET queue_weight = %(weight)s WHERE name = %(name)s RETURNING id
)
SELECT changed.id::text AS id
FROM changed, LATERAL pg_notify('gateway_principals', 't:' || changed.id::text)
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

KEY_SETTINGS = """
SELECT k.id AS key_id, k.name, t.name AS tenant, k.expires_at, k.revoked_at,
       k.previous_secret_expires_at, k.prompt_log, k.prompt_log_retention_days
FROM gateway.api_keys k JOIN gateway.tenants t ON t.id = k.tenant_id
WHERE k.id = %(key_id)s::text
"""

KEY_SETTINGS_FOR_UPDATE = KEY_SETTINGS + "FOR UPDATE OF k\n"

# The old hash moves aside for the grace; a grace of 0 drops it. SET reads the old row, so
# `secret_hash` on the right is the one being replaced. A second rotation ends the first's grace.
ROTATE_KEY = """
UPDATE gateway.api_keys SET
    previous_secret_hash = CASE WHEN %(grace_s)s::double precision > 0 THEN secret_hash END,
    previous_secret_expires_at = CASE WHEN %(grace_s)s::double precision > 0
        THEN now() + make_interval(secs => %(grace_s)s::double precision) END,
    secret_hash = %(secret_hash)s
WHERE id = %(key_id)s::text
"""

# A NULL `prompt_log` keeps it; a NULL retention (when set) means the configured default.
SET_PROMPT_LOG = """
UPDATE gateway.api_keys SET
    prompt_log = coalesce(%(prompt_log)s::boolean, prompt_log),
    prompt_log_retention_days = CASE WHEN %(retention_set)s::boolean
        THEN %(retention_days)s::integer ELSE prompt_log_retention_days END
WHERE id = %(key_id)s::text
"""

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

# Audit reads for `gateway audit`: read-only, one snapshot, timestamps in UTC.
AUDIT_READING = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL TIME ZONE 'UTC'"
)

AUDIT_NOW = "SELECT now()"

# A deleted tenant has no name left, so its rows show its id.
_AUDIT_ROWS = """
SELECT a.ts, a.request_id, coalesce(t.name, a.tenant_id::text) AS tenant,
       a.tenant_id::text AS tenant_id, %(key_prefix)s::text || '_' || a.key_id AS key,
       host(a.client_ip) AS client_ip, a.method, a.route, a.model, a.backend, a.status,
       a.error_code, a.prompt_tokens, a.completion_tokens, a.ttfb_ms, a.duration_ms, a.streamed
FROM gateway.audit_log a LEFT JOIN gateway.tenants t ON t.id = a.tenant_id
WHERE (%(tenant_id)s::uuid IS NULL OR a.tenant_id = %(tenant_id)s::uuid)
  AND (%(key_id)s::text IS NULL OR a.key_id = %(key_id)s::text)
  AND a.status BETWEEN %(status_min)s AND %(status_max)s
"""

AUDIT_RECENT = _AUDIT_ROWS + "ORDER BY a.ts DESC, a.request_id DESC LIMIT %(lines)s\n"

AUDIT_SINCE = _AUDIT_ROWS + "  AND a.ts >= %(since)s ORDER BY a.ts, a.request_id\n"

AUDIT_EXPORT = (
    _AUDIT_ROWS
    + "  AND a.ts >= %(since)s AND a.ts < coalesce(%(until)s, 'infinity'::timestamptz)\n"
    + "ORDER BY a.ts, a.request_id\n"
)

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

# Backends for `gateway backends`; the table's trigger sends NOTIFY gateway_backends at commit.
ADD_BACKEND = """
INSERT INTO gateway.backends (name, url, kind, auth_header, auth_scheme, token_env, token,
                              priority, max_parallel, enabled)
VALUES (%(name)s, %(url)s, %(kind)s, %(auth_header)s, %(auth_scheme)s, %(token_env)s,
        %(token)s, %(priority)s, %(max_parallel)s, %(enabled)s)
RETURNING name, url, kind, auth_header, auth_scheme, token_env, token, priority, max_parallel,
          enabled
"""

# Higher priority first: the order the gateway prefers them in.
LIST_BACKENDS = """
SELECT name, url, kind, auth_header, auth_scheme, token_env, token, priority, max_parallel,
       enabled
FROM gateway.backends ORDER BY priority DESC, name
"""

REMOVE_BACKEND = """
DELETE FROM gateway.backends WHERE name = %(name)s::text
RETURNING name, url, kind, auth_header, auth_scheme, token_env, token, priority, max_parallel,
          enabled
"""

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

# --- Retention sweeps (gateway/retention.py), on a connection of their own.

# A sweep waits on nobody for long; UTC so partition bounds read back the same everywhere.
RETENTION_SESSION = """
SELECT set_config('lock_timeout', %(lock_timeout)s, false),
       set_config('statement_timeout', %(statement_timeout)s, false),
       set_config('TimeZone', 'UTC', false)
"""

# Held for the whole sweep and released when its connection closes: one sweeper at a time.
RETENTION_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('gateway.retention_sweep')) AS locked"

ENSURE_AUDIT_PARTITIONS = (
    "SELECT gateway.ensure_audit_partitions(%(from_month)s::date, %(months)s::integer) AS created"
)

# Bounds come from the catalogue, not the name; MINVALUE, MAXVALUE and DEFAULT read as NULL.
AUDIT_PARTITIONS = r"""
SELECT c.relname AS name,
       (regexp_match(b.bound, $$FROM \('([^']+)'\)$$))[1]::timestamptz AS lower,
       (regexp_match(b.bound, $$TO \('([^']+)'\)$$))[1]::timestamptz AS upper
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) b
WHERE i.inhparent = 'gateway.audit_log'::regclass
ORDER BY c.relname
"""

AUDIT_RETENTIONS = """
SELECT id::text AS tenant_id, audit_retention_days AS days
FROM gateway.tenants WHERE audit_retention_days IS NOT NULL
"""

# {partition} is one partition of gateway.audit_log, {rows} one of the two conditions below.
DROP_AUDIT_PARTITION = "DROP TABLE {partition}"
AUDIT_TENANT_ROWS = "tenant_id = ANY(%(tenant_ids)s::uuid[]) AND ts < %(before)s::timestamptz"
# Everyone without a retention of their own: no tenant, a deleted tenant, a tenant left at null.
AUDIT_OTHER_ROWS = (
    "ts < %(before)s::timestamptz AND (tenant_id IS NULL OR tenant_id <> ALL(%(own)s::uuid[]))"
)
# A bounded batch found by index and deleted by ctid, so no statement holds its locks for long.
DELETE_AUDIT_BATCH = """
DELETE FROM {partition} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM {partition} WHERE {rows} LIMIT %(limit)s::integer))
"""
COUNT_AUDIT = "SELECT count(*) AS n FROM {partition} WHERE {rows}"

DELETE_EXPIRED_PROMPTS = """
DELETE FROM gateway.prompt_log WHERE id = ANY(ARRAY(
    SELECT id FROM gateway.prompt_log WHERE expires_at < %(now)s::timestamptz
    LIMIT %(limit)s::integer))
"""
COUNT_EXPIRED_PROMPTS = (
    "SELECT count(*) AS n FROM gateway.prompt_log WHERE expires_at < %(now)s::timestamptz"
)
