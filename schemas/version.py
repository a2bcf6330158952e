"""Version numbers. The package version is read by setup.cfg; the schema version is written into
every record and every manifest, and readers refuse a mismatch (see schemas.manifest)."""

PACKAGE_VERSION = "0.2.0"

# Bump when a record key, dtype or meaning changes, or what a shard holds and in which order; readers
# then fail with a clear error instead of misreading old shards.
#   1  rotnet 0.1: shard membership and order varied between runs; no shard checksums
#   2  rotnet 0.2: shards by a stable hash of the image id, records in a fixed mixed order (any prefix is
#      a uniform sample), a SHA-256 per shard in the manifest
SCHEMA_VERSION = 2
