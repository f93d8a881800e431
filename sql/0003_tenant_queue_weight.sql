-- A tenant's share of a backend when requests wait for one: served round-robin across tenants,
-- each taking up to this many turns in a row. 1 for everyone is plain round-robin.
alter table gateway.tenants
    add column queue_weight integer not null default 1
        constraint tenants_queue_weight_range check (queue_weight between 1 and 1000);
