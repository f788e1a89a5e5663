"""The canonical request path (docs/policies.md): what the policy judges is what is forwarded.

A policy compares strings. ``/api/chat.postMessage``, ``/api/./chat.postMessage``,
``/api//chat.postMessage``, ``/api/x/../chat.postMessage`` and ``/api/chat%2EpostMessage``
name one resource at most servers, so a rule written for the first must see all of them
as the first. The proxy therefore normalizes the path before the policy and forwards the
normalized path, never the spelling the agent chose:

- percent-encoded unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded, every other
  escape is kept with upper-case hex (RFC 3986 §6.2.2);
- repeated slashes are merged (``//`` → ``/``), a trailing slash is kept;
- dot segments are resolved (RFC 3986 §5.2.4), never above the root.

Some spellings cannot be normalized without guessing what the upstream does with them, so
they are refused (``BadPath``, a 400): an encoded ``/`` (``%2F``) or ``\\`` (``%5C``), a raw
``\\`` (some servers read it as ``/``), a NUL, a malformed escape, and a dot segment spelled
with escapes (``%2E%2E``): decoded it would climb a level, undecoded it is a name.
The query string is left as sent.
"""

from __future__ import annotations

import string

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX = frozenset(string.hexdigits)
_REFUSED = {0x2F: "an encoded '/' (%2F)", 0x5C: "an encoded '\\' (%5C)", 0x00: "a NUL (%00)"}


class BadPath(ValueError):
    """A path that cannot be normalized without changing what it may mean upstream."""


def normalize_path(raw: str) -> str:
    """The canonical form of an absolute path (``/...``, without the query)."""
    if not raw.startswith("/"):
        raise BadPath("the path must start with '/'")
    if "\\" in raw:
        raise BadPath("a '\\' in the path is ambiguous (some servers read it as '/'); encode it")
    if "\x00" in raw:
        raise BadPath("a NUL in the path is not accepted")
    out: list[str] = []
    segments = raw.split("/")[1:]
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        name, encoded_dot = _decode_segment(segment)
        if name in (".", ".."):
            if encoded_dot:
                raise BadPath(f"the dot segment {segment!r} is percent-encoded; send it as "
                              f"{name!r} or encode a different character")
            if name == ".." and out:
                out.pop()
            if last:
                out.append("")  # "/a/b/.." is "/a/": a directory
            continue
        if name == "" and not last:
            continue  # "//" merged into "/"
        out.append(name)
    return "/" + "/".join(out)


def _decode_segment(segment: str) -> tuple[str, bool]:
    """(segment with unreserved escapes decoded, whether a '.' was among them)."""
    if "%" not in segment:
        return segment, False
    parts: list[str] = []
    encoded_dot = False
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch != "%":
            parts.append(ch)
            i += 1
            continue
        hex_digits = segment[i + 1:i + 3]
        if len(hex_digits) != 2 or not set(hex_digits) <= _HEX:
            raise BadPath(f"malformed percent-escape {segment[i:i + 3]!r} in the path")
        value = int(hex_digits, 16)
        if value in _REFUSED:
            raise BadPath(f"{_REFUSED[value]} in the path is ambiguous: servers differ on "
                          "whether it separates segments")
        decoded = chr(value)
        if decoded in _UNRESERVED:
            parts.append(decoded)
            encoded_dot = encoded_dot or decoded == "."
        else:
            parts.append("%" + hex_digits.upper())
        i += 3
    return "".join(parts), encoded_dot


def normalize_target(target: str) -> tuple[str, str]:
    """(normalized ``path?query``, the raw path as sent) for an origin-form target."""
    path, sep, query = target.partition("?")
    return normalize_path(path) + sep + query, path
