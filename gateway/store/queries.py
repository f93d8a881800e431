"""Every SQL statement the running gateway and its CLI issue, by name; the schema lives in sql/."""

PING = "SELECT 1"

FIND_KEY = """
SELECT k.id AS key_id, k.name AS key_name, t.id::text AS tenant_id, t.name AS tenant_name,
       k.secret_hash, k.previous_secret_hash, k.previous_secret_expires_at, k.expires_at,
       (k.revoked_at IS NOT NULL) AS revoked, (t.disabled_at IS NOT NULL) AS tenant_disabled
FROM gateway.api_keys k JOIN gateway.tenants t ON t.id = k.tenant_id
WHERE k.id = %(key_id)s
"""

UPDATE_KEY_HASH = """
UPDATE gateway.api_keys SET secret_hash = %(secret_hash)s
WHERE id = %(key_id)s AND secret_hash = %(old_hash)s
"""

LISTEN_REVOCATIONS = "LISTEN gateway_revocations"

CREATE_TENANT = """
INSERT INTO gateway.tenants (name) VALUES (%(name)s)
RETURNING id::text AS id, name, created_at
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
