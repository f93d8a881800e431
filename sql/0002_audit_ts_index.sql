-- `gateway audit tail` and `audit export` without a tenant read audit rows by time alone; without
-- this index each of their reads scans and sorts every row in the range.
create index audit_log_ts_idx on gateway.audit_log (ts);
