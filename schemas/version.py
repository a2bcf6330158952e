"""Version numbers. The package version is read by setup.cfg; the schema version is written into
every record and every manifest, and readers refuse a mismatch (see schemas.manifest)."""

PACKAGE_VERSION = "0.1.0"

# Bump when a record key, dtype or meaning changes; readers then fail with a clear error instead of
# misreading old shards.
SCHEMA_VERSION = 1
