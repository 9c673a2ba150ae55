"""PaddlePaddle's ``ParameterConfig`` message, the ``<name>.protobuf`` sidecar of a v2 parameter.

The message is defined in ``proto/ParameterConfig.proto`` (PaddlePaddle/Paddle, proto2)::

    message ParameterConfig {
      required string name = 1;
      required uint64 size = 2;
      ...                               // learning_rate = 3 ... decay_rate_l1 = 8: doubles
      repeated uint64 dims = 9;         // "dims[0] as height, dims[1] as width"
      ...                               // fields 10 to 24: training options
    }

Only ``name``, ``size`` and ``dims`` matter for reading weights; every other field is skipped
by its wire type. Protocol buffers' wire format (developers.google.com/protocol-buffers,
"Encoding"): each field is a varint key ``field_number << 3 | wire_type``; wire type 0 is a
varint (7 bits a byte, least significant group first, high bit set on all but the last byte),
1 a fixed 8 bytes, 2 a varint length and that many bytes, 5 a fixed 4 bytes. A proto2
``repeated uint64`` is written unpacked (one key and varint per element), but parsers accept
the packed form (wire type 2 holding the varints) too, and so does this one.

The config parser fills ``dims`` for some parameters only
(``python/paddle/trainer/config_parser.py``): a fully connected weight gets ``[input size,
output size]``, batch norm's moving mean and variance ``[1, channels]``, a bias ``[1, size]``
(a convolution's shared bias ``[channels, 1]``), while convolution filters and batch norm's
scale get none. v2's ``Parameters.get_shape`` reads an empty ``dims`` as ``(1, size)``.

A small reader is enough here; it needs no ``protobuf`` package.
"""
from __future__ import annotations

from dataclasses import dataclass

NAME_FIELD, SIZE_FIELD, DIMS_FIELD = 1, 2, 9
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10             # a 64-bit value takes at most 10 groups of 7 bits


@dataclass(frozen=True)
class ParameterConfig:
    """What a sidecar says about its parameter (None: the field is absent)."""

    name: str | None
    size: int | None
    dims: tuple[int, ...]


def parse_parameter_config(data: bytes) -> ParameterConfig:
    """Decode a serialised ``ParameterConfig``; ``ValueError`` says what is malformed."""
    name: str | None = None
    size: int | None = None
    dims: list[int] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise ValueError(f"field number 0 at byte {position}")
        if wire_type == VARINT:
            value, position = _varint(data, position)
            if field == SIZE_FIELD:
                size = value
            elif field == DIMS_FIELD:
                dims.append(value)
        elif wire_type == LENGTH_DELIMITED:
            length, position = _varint(data, position)
            end = position + length
            if end > len(data):
                raise ValueError(f"a field of {length} bytes runs past the end ({len(data)} bytes)")
            payload = data[position:end]
            if field == NAME_FIELD:
                try:
                    name = payload.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError("the name is not UTF-8 text") from None
            elif field == DIMS_FIELD:                      # packed repeated varints
                inner = 0
                while inner < len(payload):
                    value, inner = _varint(payload, inner)
                    dims.append(value)
            position = end
        elif wire_type in (FIXED64, FIXED32):
            position += 8 if wire_type == FIXED64 else 4
            if position > len(data):
                raise ValueError("a fixed-size field runs past the end")
        else:
            raise ValueError(f"wire type {wire_type} (field {field}) is not used by ParameterConfig")
    return ParameterConfig(name=name, size=size, dims=tuple(dims))


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    for index in range(MAX_VARINT_BYTES):
        if position + index >= len(data):
            raise ValueError("the message ends inside a varint")
        byte = data[position + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, position + index + 1
    raise ValueError(f"a varint longer than {MAX_VARINT_BYTES} bytes at byte {position}")


__all__ = ["ParameterConfig", "parse_parameter_config"]
