-- The initial gateway schema: tenants, keys, usage, audit, prompt log, backends, revocations.
-- The migration runner wraps this file in one transaction, so it holds no BEGIN/COMMIT.

-- The runner creates the schema first to hold its own bookkeeping table.
create schema if not exists gateway;

-- Names appear in URLs, metric labels and Redis keys, so they stay short, lower-case and
-- free of separators that would need escaping anywhere.
create table gateway.tenants (
    id                    uuid primary key default gen_random_uuid(),
    name                  text not null unique
        constraint tenants_name_format check (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    allow_all_models      boolean not null default false,
    allowed_models        text[] not null default '{}',
    -- null means "use the configured default", so a config change reaches every tenant
    -- that never chose its own value.
    rpm                   integer constraint tenants_rpm_nonnegative check (rpm >= 0),
    tpm                   integer constraint tenants_tpm_nonnegative check (tpm >= 0),
    concurrent            integer constraint tenants_concurrent_nonnegative check (concurrent >= 0),
    -- null means unlimited; 0 is a deliberate "no tokens at all".
    budget_daily_tokens   bigint
        constraint tenants_budget_daily_nonnegative check (budget_daily_tokens >= 0),
    budget_monthly_tokens bigint
        constraint tenants_budget_monthly_nonnegative check (budget_monthly_tokens >= 0),
    budget_total_tokens   bigint
        constraint tenants_budget_total_nonnegative check (budget_total_tokens >= 0),
    audit_retention_days  integer
        constraint tenants_audit_retention_positive check (audit_retention_days > 0),
    created_at            timestamptz not null default now(),
    disabled_at           timestamptz
);

-- The id is the public prefix of the key, so lookups never touch the secret; the secret is
-- only ever stored as an argon2id hash.
create table gateway.api_keys (
    id                          text primary key
        constraint api_keys_id_format check (id ~ '^[A-Za-z0-9]{12}$'),
    tenant_id                   uuid not null references gateway.tenants on delete cascade,
    name                        text not null
        constraint api_keys_name_format check (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    secret_hash                 text not null,
    -- Rotation keeps the old secret valid until this grace period ends, so clients can
    -- roll over without an outage.
    previous_secret_hash        text,
    previous_secret_expires_at  timestamptz,
    created_at                  timestamptz not null default now(),
    expires_at                  timestamptz,
    revoked_at                  timestamptz,
    last_used_at                timestamptz,
    -- Every override below is null to inherit the tenant's value.
    allow_all_models            boolean,
    allowed_models              text[],
    rpm                         integer constraint api_keys_rpm_nonnegative check (rpm >= 0),
    tpm                         integer constraint api_keys_tpm_nonnegative check (tpm >= 0),
    concurrent                  integer
        constraint api_keys_concurrent_nonnegative check (concurrent >= 0),
    budget_daily_tokens         bigint
        constraint api_keys_budget_daily_nonnegative check (budget_daily_tokens >= 0),
    budget_monthly_tokens       bigint
        constraint api_keys_budget_monthly_nonnegative check (budget_monthly_tokens >= 0),
    budget_total_tokens         bigint
        constraint api_keys_budget_total_nonnegative check (budget_total_tokens >= 0),
    prompt_log                  boolean not null default false,
    prompt_log_retention_days   integer
        constraint api_keys_prompt_log_retention_positive check (prompt_log_retention_days > 0),
    unique (tenant_id, name)
);

-- The unique (tenant_id, name) index already serves lookups by tenant; this one keeps the
-- cascade from tenants and per-tenant listings cheap without relying on that.
create index api_keys_tenant_id_idx on gateway.api_keys (tenant_id);

-- The durable truth for budgets: Redis counters are a cache rebuilt from these rows. No
-- foreign keys, so spend history survives deleting the key or tenant it was charged to.
create table gateway.usage_ledger (
    tenant_id          uuid not null,
    key_id             text not null,
    period             text not null
        constraint usage_ledger_period_known check (period in ('day', 'month', 'total')),
    period_start       date not null,
    prompt_tokens      bigint not null default 0,
    completion_tokens  bigint not null default 0,
    requests           bigint not null default 0,
    updated_at         timestamptz not null default now(),
    primary key (key_id, period, period_start),
    -- One canonical period_start per period, so an upsert can never split a period's
    -- usage across two rows.
    constraint usage_ledger_total_start check (period <> 'total' or period_start = '1970-01-01'),
    constraint usage_ledger_month_start
        check (period <> 'month' or extract(day from period_start) = 1)
);

-- Tenant-wide budgets sum their keys' rows for one period.
create index usage_ledger_tenant_period_idx
    on gateway.usage_ledger (tenant_id, period, period_start);

-- Partitioned by month so retention drops a whole partition instead of deleting rows. No
-- foreign keys: the audit trail must outlive the tenants and keys it mentions.
create table gateway.audit_log (
    ts                 timestamptz not null,
    request_id         text not null,
    tenant_id          uuid,
    key_id             text,
    client_ip          inet,
    method             text not null,
    route              text not null,
    model              text,
    backend            text,
    status             smallint not null,
    error_code         text,
    prompt_tokens      integer,
    completion_tokens  integer,
    ttfb_ms            real,
    duration_ms        real,
    streamed           boolean
) partition by range (ts);

-- Catches rows whose month has no partition yet, so an audit write never fails because
-- maintenance fell behind.
create table gateway.audit_log_default partition of gateway.audit_log default;

create index audit_log_tenant_ts_idx on gateway.audit_log (tenant_id, ts);
create index audit_log_request_id_idx on gateway.audit_log (request_id);

-- Month boundaries are UTC midnights, so partition bounds do not depend on the TimeZone of
-- whichever session created them. Rows that already landed in the default partition for a
-- month are moved into that month's new partition, because Postgres refuses to create a
-- partition while the default partition holds rows belonging to it.
create function gateway.ensure_audit_partitions(from_month date, months integer)
returns integer
language plpgsql
set search_path = pg_catalog
as $$
declare
    first_month  date;
    month_start  date;
    lower_bound  timestamptz;
    upper_bound  timestamptz;
    part_name    text;
    created      integer := 0;
begin
    if from_month is null or months is null or months < 0 then
        raise exception 'ensure_audit_partitions(%, %): need a month and a non-negative count',
            from_month, months
            using errcode = 'invalid_parameter_value';
    end if;

    -- Two sweepers running at once would otherwise race between the existence check and
    -- the create; released at commit.
    perform pg_advisory_xact_lock(hashtext('gateway.ensure_audit_partitions'));

    first_month := date_trunc('month', from_month)::date;
    for i in 0 .. months - 1 loop
        month_start := (first_month + make_interval(months => i))::date;
        part_name := format('audit_log_y%sm%s', to_char(month_start, 'YYYY'),
                            to_char(month_start, 'MM'));
        continue when to_regclass(format('gateway.%I', part_name)) is not null;

        lower_bound := month_start::timestamp at time zone 'UTC';
        upper_bound := (month_start + interval '1 month')::timestamp at time zone 'UTC';

        -- Locking the parent first (which locks every partition) blocks audit inserts until
        -- commit; taking the default partition's lock first could deadlock with an insert
        -- that holds the parent and waits for the default partition.
        lock table gateway.audit_log in share row exclusive mode;

        if exists (select 1 from gateway.audit_log_default
                   where ts >= lower_bound and ts < upper_bound) then
            execute format('create table gateway.%I (like gateway.audit_log including defaults)',
                           part_name);
            execute format('with moved as (delete from gateway.audit_log_default'
                           ' where ts >= $1 and ts < $2 returning *)'
                           ' insert into gateway.%I select * from moved', part_name)
                using lower_bound, upper_bound;
            execute format('alter table gateway.audit_log attach partition gateway.%I'
                           ' for values from (%L) to (%L)', part_name, lower_bound, upper_bound);
        else
            execute format('create table gateway.%I partition of gateway.audit_log'
                           ' for values from (%L) to (%L)', part_name, lower_bound, upper_bound);
        end if;
        created := created + 1;
    end loop;
    return created;
end;
$$;

-- The current month and the next two, so writes keep landing in real partitions until the
-- sweeper's next run even if it is down for a while.
select gateway.ensure_audit_partitions((now() at time zone 'UTC')::date, 3);

-- Opt-in per key; expires_at drives the TTL sweep.
create table gateway.prompt_log (
    id          bigint generated always as identity primary key,
    ts          timestamptz not null default now(),
    request_id  text not null,
    tenant_id   uuid not null,
    key_id      text not null,
    model       text,
    request     jsonb not null,
    response    text,
    expires_at  timestamptz not null
);

create index prompt_log_expires_at_idx on gateway.prompt_log (expires_at);

-- Backends live in the database so operators can change them without a restart.
create table gateway.backends (
    id            uuid primary key default gen_random_uuid(),
    name          text not null unique
        constraint backends_name_format check (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    url           text not null,
    kind          text not null default 'ollama'
        constraint backends_kind_known check (kind in ('ollama', 'openai')),
    auth_header   text,
    auth_scheme   text,
    token_env     text,
    token         text,
    priority      integer not null default 0,
    max_parallel  integer not null default 8
        constraint backends_max_parallel_positive check (max_parallel > 0),
    enabled       boolean not null default true,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);

-- Keeps updated_at truthful whichever client edits the row.
create function gateway.backends_touch_updated_at()
returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

create trigger backends_touch_updated_at
    before update on gateway.backends
    for each row execute function gateway.backends_touch_updated_at();

-- Every gateway process LISTENs and reloads the named backend, so a change reaches all of
-- them at commit without polling. A rename notifies both names so the old one is dropped.
create function gateway.backends_notify()
returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        perform pg_notify('gateway_backends', old.name);
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        perform pg_notify('gateway_backends', new.name);
    end if;
    return null;
end;
$$;

create trigger backends_notify
    after insert or update or delete on gateway.backends
    for each row execute function gateway.backends_notify();

-- An append-only record of why and when keys were revoked.
create table gateway.revocations (
    id          bigint generated always as identity primary key,
    key_id      text not null references gateway.api_keys (id) on delete cascade,
    revoked_at  timestamptz not null default now(),
    reason      text
);

-- Revoking is one insert: the key row is marked in the same transaction, and every gateway
-- process evicts the key from its cache at commit instead of waiting for a cache TTL.
-- coalesce keeps the first revocation time when a key is revoked twice.
create function gateway.revocations_apply()
returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
    update gateway.api_keys
       set revoked_at = coalesce(revoked_at, new.revoked_at)
     where id = new.key_id;
    perform pg_notify('gateway_revocations', new.key_id);
    return null;
end;
$$;

create trigger revocations_apply
    after insert on gateway.revocations
    for each row execute function gateway.revocations_apply();
