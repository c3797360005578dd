"""Triton model configurations (``config.pbtxt``): written from plain dicts, checked against Triton's schema.

A configuration is protobuf text format of Triton's ``ModelConfig`` message. :func:`to_pbtxt` writes
one from nested dicts and lists (an :class:`Enum` value is written bare, e.g. ``TYPE_FP32``), so the
repository writer (:mod:`textcam.serving.triton_repo`) states each model as data. :func:`validate`
parses a text against Triton's own ``model_config.proto`` (shipped in ``tritonclient[grpc]`` as
``tritonclient.grpc.model_config_pb2``): a misspelt field or enum value fails there, one line, as it
would when the server loads the model.

Example::

    print(to_pbtxt({"name": "m", "max_batch_size": 8, "input": [{"name": "x", "data_type": Enum("TYPE_FP32"),
                                                                   "dims": [3]}]}))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from textcam.errors import TextcamError, first_line

DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
              "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "bytes": "TYPE_STRING"}
"""numpy dtype name -> Triton data type (Triton calls variable-length bytes TYPE_STRING)."""


class Enum(str):
    """An enum value: written without quotes."""


def data_type(dtype: str) -> Enum:
    if dtype not in DATA_TYPES:
        raise TextcamError(f"tensor dtype {dtype!r}: no Triton data type for it ({', '.join(DATA_TYPES)})")
    return Enum(DATA_TYPES[dtype])


def to_pbtxt(config: Mapping[str, object]) -> str:
    """Protobuf text format of ``config`` (field order kept; lists of dicts are repeated messages)."""
    return "\n".join(_fields(config, 0)) + "\n"


def _fields(message: Mapping[str, object], depth: int) -> list[str]:
    pad = "  " * depth
    lines: list[str] = []
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{", *_fields(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if value and all(isinstance(item, Mapping) for item in value):
                lines.append(f"{pad}{key} [")
                for index, item in enumerate(value):
                    comma = "," if index < len(value) - 1 else ""
                    lines += [f"{pad}  {{", *_fields(item, depth + 2), f"{pad}  }}{comma}"]
                lines.append(f"{pad}]")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _scalar(value: object) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # protobuf text strings take JSON's escapes for what we write
    raise TextcamError(f"config value {value!r}: not writable as protobuf text")


def validate(text: str, where: str) -> None:
    """Parse ``text`` as Triton's ``ModelConfig``; a one-line TextcamError naming ``where`` if it does not.

    Needs ``tritonclient[grpc]`` (Triton's schema); raises ImportError without it, so that callers
    can say the check was skipped rather than passed.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TextcamError(f"{where}: not a valid Triton model configuration ({first_line(exc)})") from None
