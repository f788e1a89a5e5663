"""What a policy's decision depends on: which parts of the input it can read, and
whether anything else (the clock, randomness, the network) enters it.

Handing the input to rego-cpp costs about a microsecond per value, more than the whole
evaluation of a simple policy; headers, the parsed query and the body text are most of
the values and most policies never look at them. So the embedded engine passes only
what the policies refer to.

The analysis is conservative. In Rego the input is reachable only through the keyword
``input``; every occurrence outside strings and comments is read as follows:

- ``input.a.b`` (two names): the policy may read ``a.b`` and anything under it;
- ``input.a`` followed by anything else (``[``, a space, ``as`` in an import): all of ``a``;
- ``input`` followed by anything else (``input[k]``, ``walk(input)``, ``import input``):
  everything — nothing is pruned.

A policy that reads a field therefore always finds it; at worst more is passed than read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# What a policy may read: None for everything, else {key: None (all of it) or {key: None}}.
InputRefs = dict[str, Any] | None

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = re.compile(r"(?<![A-Za-z0-9_.])input(?![A-Za-z0-9_])")


def input_refs(sources: Iterable[str]) -> InputRefs:
    refs: dict[str, Any] = {}
    for source in sources:
        code = _code_only(source)
        for match in _WORD.finditer(code):
            path = _names_after(code, match.end(), 2)
            if not path:
                return None
            first = path[0]
            if len(path) == 1:
                refs[first] = None
            elif first not in refs:
                refs[first] = {path[1]: None}
            elif refs[first] is not None:
                refs[first][path[1]] = None
    return refs


# Builtins whose answer is not a function of the input and data alone.
_IMPURE = re.compile(
    r"(?<![A-Za-z0-9_.])(time\.now_ns|rand\.\w+|uuid\.rfc4122|http\.send|net\.lookup_ip_addr|"
    r"opa\.runtime|io\.jwt\.decode_verify|crypto\.x509\.parse_and_verify_\w+|trace|print)\s*\(")


def pure(sources: Iterable[str]) -> bool:
    """True when the same input always gets the same decision: no builtin that reads
    the clock, randomness or the network is called (strings and comments aside)."""
    return not any(_IMPURE.search(_code_only(source)) for source in sources)


def prune(doc: dict[str, Any], refs: InputRefs) -> dict[str, Any]:
    if refs is None:
        return doc
    out: dict[str, Any] = {}
    for key, sub in refs.items():
        if key not in doc:
            continue
        value = doc[key]
        if sub is None or not isinstance(value, dict):
            out[key] = value
        else:
            out[key] = {k: value[k] for k in sub if k in value}
    return out


def _names_after(code: str, pos: int, limit: int) -> list[str]:
    """The ``.name`` chain right after ``pos`` (no spaces: ``input . a`` counts as ``input``)."""
    names: list[str] = []
    while len(names) < limit and code.startswith(".", pos):
        found = _NAME.match(code, pos + 1)
        if found is None:
            break
        names.append(found.group())
        pos = found.end()
    return names


_LITERAL = re.compile(r'#[^\n]*|"(?:\\.|[^"\\\n])*"|`[^`]*`')


def _code_only(source: str) -> str:
    """The source with comments and string literals blanked out (positions kept)."""
    return _LITERAL.sub(lambda m: " " * len(m.group()), source)
