"""The one definition of the record and manifest format; imports without TensorFlow or Beam."""

from schemas.manifest import (
    DatasetInfo,
    ImageSpec,
    ManifestError,
    ShardInfo,
    SplitInfo,
    load_manifest,
    write_manifest,
)
from schemas.record import (
    FEATURES,
    IMAGE_FORMATS,
    NUM_ANGLES,
    Record,
    SchemaError,
    decode_example,
    encode_example,
    example_key,
    example_keys,
    feature_spec,
    parse_batch,
)
from schemas.sharding import MANIFEST_NAME, parse_shard_name, shard_name
from schemas.splits import assign_split, in_subset, stable_fraction
from schemas.version import PACKAGE_VERSION, SCHEMA_VERSION

__all__ = [
    "FEATURES",
    "IMAGE_FORMATS",
    "MANIFEST_NAME",
    "NUM_ANGLES",
    "PACKAGE_VERSION",
    "SCHEMA_VERSION",
    "DatasetInfo",
    "ImageSpec",
    "ManifestError",
    "Record",
    "SchemaError",
    "ShardInfo",
    "SplitInfo",
    "assign_split",
    "decode_example",
    "encode_example",
    "example_key",
    "example_keys",
    "feature_spec",
    "in_subset",
    "load_manifest",
    "parse_batch",
    "parse_shard_name",
    "shard_name",
    "stable_fraction",
    "write_manifest",
]
