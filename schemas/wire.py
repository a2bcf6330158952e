"""Protocol-buffer wire encoding of `tf.train.Example`, without TensorFlow or protobuf.

Only the subset the record schema needs (bytes, int64 and float lists). Map entries are written in
sorted key order, which matches TensorFlow's deterministic serialization byte for byte, so the same
record always serializes to the same bytes (tests compare against `SerializeToString(deterministic=True)`).

    message Example  { Features features = 1; }
    message Features { map<string, Feature> feature = 1; }
    message Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                                    Int64List int64_list = 3; } }
    message BytesList { repeated bytes value = 1; }
    message FloatList { repeated float value = 1 [packed = true]; }
    message Int64List { repeated int64 value = 1 [packed = true]; }
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

_LENGTH_DELIMITED = 2

BYTES_LIST = 1
FLOAT_LIST = 2
INT64_LIST = 3


def _varint(value: int) -> bytes:
    # int64 is encoded as its unsigned 64-bit two's complement (negative numbers take 10 bytes).
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return _varint((number << 3) | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _encode_list(kind: int, values: Sequence) -> bytes:
    if kind == BYTES_LIST:
        body = b"".join(_field(1, bytes(value)) for value in values)
    elif kind == INT64_LIST:
        body = _field(1, b"".join(_varint(int(value)) for value in values)) if len(values) else b""
    elif kind == FLOAT_LIST:
        body = _field(1, struct.pack(f"<{len(values)}f", *values)) if len(values) else b""
    else:
        raise ValueError(f"unknown feature list kind {kind}")
    return _field(kind, body)


def encode_example(features: Mapping[str, tuple[int, Sequence]]) -> bytes:
    """Serialize {key: (kind, values)} as a tf.train.Example, keys in sorted order."""
    entries = []
    for key in sorted(features):
        kind, values = features[key]
        entry = _field(1, key.encode("utf-8")) + _field(2, _encode_list(kind, values))
        entries.append(_field(1, entry))
    return _field(1, b"".join(entries))
