"""Just enough of Go's ``encoding/json`` to match Toxiproxy's request decoding and response bytes.

Decoding follows ``json.NewDecoder(body).Decode(&v)``: only the first JSON value is read, unknown
keys are ignored, keys match case-insensitively, ``null`` leaves a field alone, and integer fields
reject ``100.0``, ``1e3``, ``true`` and ``"100"``. Encoding is compact, escapes ``<``, ``>`` and
``&`` like Go, and writes float32 values the way Go does (``1``, ``0.2``).
"""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
GO_TYPES = {
    "string": "string",
    "bool": "bool",
    "int64": "int64",
    "int": "int",
    "float32": "float32",
}


class DecodeError(ValueError):
    """A request body Go's decoder would refuse; ``str()`` is Go's message (without the prefix)."""


class _FloatLiteral(float):
    """A JSON number with a fraction or exponent; remembers the literal for error messages."""

    literal: str

    def __new__(cls, literal: str) -> _FloatLiteral:
        obj = super().__new__(cls, float(literal))
        obj.literal = literal
        return obj


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(parse_float=_FloatLiteral, parse_constant=_reject_constant)


def _fix_surrogates(value: Any) -> Any:
    """Replace lone surrogates (from ``"\\ud800"`` escapes) with U+FFFD, as Go does."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, list):
        return [_fix_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_fix_surrogates(k): _fix_surrogates(v) for k, v in value.items()}
    return value


def loads_first(raw: bytes) -> Any:
    """Decode the first JSON value of ``raw`` like Go's ``Decoder.Decode``; the rest is ignored."""
    text = raw.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise DecodeError("EOF")
    try:
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            raise DecodeError("unexpected EOF") from None
        char = text[exc.pos]
        where = "looking for beginning of value" if exc.msg == "Expecting value" else exc.msg
        raise DecodeError(f"invalid character {char!r} {where}") from None
    except RecursionError:
        raise DecodeError("exceeded max depth") from None
    return _fix_surrogates(value)


def json_kind(value: Any) -> str:
    """Go's name for the JSON kind of ``value`` in unmarshal errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, _FloatLiteral):
        return f"number {value.literal}"
    if isinstance(value, int):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _convert(value: Any, kind: str) -> Any:
    """Convert one decoded JSON value to a Go field kind; ``None`` means a type mismatch."""
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind in ("int64", "int"):
        if (
            isinstance(value, bool)
            or isinstance(value, _FloatLiteral)
            or not isinstance(value, int)
        ):
            return None
        return value if INT64_MIN <= value <= INT64_MAX else None
    if kind == "float32":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            f32 = struct.unpack("f", struct.pack("f", float(value)))[0]
        except OverflowError:
            return None
        return None if math.isinf(f32) else f32  # out of float32 range: Go refuses it
    if kind == "object":
        return value if isinstance(value, dict) else None
    raise ValueError(f"unknown field kind {kind}")


def decode_struct(
    value: Any, fields: dict[str, str], go_type: str, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Decode a JSON value into a Go struct described by ``{json_name: kind}``, on top of ``base``.

    Kinds: ``string``, ``bool``, ``int64``, ``int``, ``float32`` and ``object`` (any JSON object,
    kept as a dict). Raises :class:`DecodeError` with Go's message on a type mismatch.
    """
    out = dict(base or {})
    if value is None:
        return out
    if not isinstance(value, dict):
        raise DecodeError(
            f"json: cannot unmarshal {json_kind(value)} into Go value of type {go_type}"
        )
    folded = {name.casefold(): name for name in fields}
    first_error: DecodeError | None = None
    for key, item in value.items():
        field = key if key in fields else folded.get(key.casefold())
        if field is None or item is None:
            continue
        kind = fields[field]
        converted = _convert(item, kind)
        if converted is None:
            if first_error is None:
                go_kind = "struct" if kind == "object" else GO_TYPES[kind]
                first_error = DecodeError(
                    f"json: cannot unmarshal {json_kind(item)} into Go struct field "
                    f"{go_type.rsplit('.', 1)[-1]}.{field} of type {go_kind}"
                )
            continue
        out[field] = converted
    if first_error is not None:
        raise first_error
    return out


class Float32:
    """A float32 value that :func:`dumps` writes the way Go's encoder does."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value


def format_float32(value: float) -> str:
    """Format a float32 like Go's encoder: shortest round-trip digits, ``1`` not ``1.0``."""
    packed = struct.pack("f", value)
    f32 = struct.unpack("f", packed)[0]
    if f32 == 0:
        return "-0" if str(f32).startswith("-") else "0"
    digits = repr(f32)
    for precision in range(1, 10):
        candidate = f"{f32:.{precision}g}"
        if struct.pack("f", float(candidate)) == packed:
            digits = candidate
            break
    number = Decimal(digits)
    magnitude = abs(f32)
    if magnitude < 1e-6 or magnitude >= 1e21:
        text = f"{number:e}".replace("e-0", "e-")
        mantissa, exponent = text.split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{exponent}"
    return format(number.normalize(), "f")


def _dump_str(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    if any(c in text for c in "<>&\u2028\u2029"):
        out = (
            out.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
    return out


def dumps(value: Any) -> str:
    """Serialise like Go's ``json.Marshal``: compact, insertion-ordered keys, Go string escapes."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Float32):
        return format_float32(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _dump_str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_dump_str(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")
