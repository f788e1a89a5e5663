"""The input document handed to rego-cpp through its C input calls (regopy's ctypes
bindings), with strings escaped the way rego-cpp keeps them.

It reaches into regopy internals (``regopy.rego_shared`` and ``Input._impl``): pyproject.toml
pins the regopy version it was written against, and with any other internals it falls back to
the JSON term (``_FAST`` is False).
"""

from __future__ import annotations

import ctypes
import json
import math
from typing import Any

import regopy

# What building the input can raise, besides regopy.RegoError: a value that is not JSON.
INPUT_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, ctypes.ArgumentError)

# --- Input ------------------------------------------------------------------------
#
# rego-cpp keeps a string as its escaped JSON text, and regopy.Input hands it raw
# strings: a value holding `"` or `\` then compares wrong (input.s == "a\"b" is false
# when it should be true) and comes back as malformed JSON. We build the same input
# through the same C calls, escaping strings first. That is also about twice as fast
# as regopy.Input, whose layers cost more than the C calls; with regopy internals other
# than these, fall back to the JSON term (correct, about twice as slow again).

_INT64 = 2**63


def set_input(rego: regopy.Interpreter, doc: Any) -> None:
    if _FAST:
        rego.set_input(_input_fast(doc))
    else:  # pragma: no cover - another regopy
        rego.set_input_term(json.dumps(doc, ensure_ascii=False, allow_nan=False))


try:
    from regopy import rego_shared as _c

    _lib = _c.rego
    _new, _free = _lib.regoNewInput, _lib.regoFreeInput
    _str, _int, _float = _lib.regoInputString, _lib.regoInputInt, _lib.regoInputFloat
    _bool, _null = _lib.regoInputBoolean, _lib.regoInputNull
    _item, _object, _array = _lib.regoInputObjectItem, _lib.regoInputObject, _lib.regoInputArray
    # regopy declared these signatures; rely on them only if they are what we expect.
    _expected = [
        (_str, [ctypes.c_void_p, ctypes.c_char_p]),
        (_int, [ctypes.c_void_p, ctypes.c_int64]),
        (_float, [ctypes.c_void_p, ctypes.c_double]),
        (_bool, [ctypes.c_void_p, ctypes.c_bool]),
        (_null, [ctypes.c_void_p]),
        (_item, [ctypes.c_void_p]),
        (_object, [ctypes.c_void_p, ctypes.c_uint32]),
        (_array, [ctypes.c_void_p, ctypes.c_uint32]),
    ]
    _FAST = (
        _new.restype is ctypes.c_void_p
        and all(list(f.argtypes or ()) == args for f, args in _expected)
        and "_impl" in regopy.Input.__init__.__code__.co_names
    )
except (ImportError, AttributeError):  # pragma: no cover - another regopy
    _FAST = False


def _input_fast(doc: Any) -> regopy.Input:
    handle = _new()
    try:
        _push(handle, doc)
    except BaseException:
        _free(handle)
        raise
    value = regopy.Input.__new__(regopy.Input)
    value._impl = handle  # freed by Input.__del__, as regopy does
    return value


_KEYS: dict[str, bytes] = {}


def _push(handle: int, value: Any) -> None:
    kind = type(value)
    if kind is str:
        rc = _str(handle, _cstr(value))
    elif kind is dict:
        for key, item in value.items():
            encoded = _KEYS.get(key)
            if encoded is None:
                if type(key) is not str:
                    raise TypeError(f"object key {key!r} is not a string")
                encoded = _cstr(key)
                if len(_KEYS) < 4096:  # keys repeat (fields, header names); bounded all the same
                    _KEYS[key] = encoded
            _check(_str(handle, encoded))
            _push(handle, item)
            _check(_item(handle))
        rc = _object(handle, len(value))
    elif kind is list or kind is tuple:
        for item in value:
            _push(handle, item)
        rc = _array(handle, len(value))
    elif kind is bool:
        rc = _bool(handle, value)
    elif kind is int:
        rc = _int(handle, value) if -_INT64 <= value < _INT64 else _float(handle, float(value))
    elif kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
        rc = _float(handle, value)
    elif value is None:
        rc = _null(handle)
    else:
        raise TypeError(f"a {kind.__name__} is not a JSON value")
    _check(rc)


def _cstr(value: str) -> bytes:
    """The string as rego-cpp stores it: JSON-escaped, without the quotes.

    Escaping also keeps a NUL from ending the C string early ("ok\0evil" is not "ok").
    """
    if '"' in value or "\\" in value or not value.isprintable():
        value = json.dumps(value, ensure_ascii=False)[1:-1]
    return value.encode("utf-8", "replace")


def _check(rc: int) -> None:
    if rc:
        raise regopy.RegoError("cannot build the input document", rc)
