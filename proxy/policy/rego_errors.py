"""rego-cpp's error text, made readable: its errors are s-expressions such as
``(error 9:policy.rego|12|(errormsg 24:Invalid ...))`` whose location is a byte offset.

- ``error_text``: the messages of such a text;
- ``load_error``: a parse error as ``PolicyLoadError("file:line:col: message")``;
- ``node_text``: an error node of a bundle or an output as that text.
"""

from __future__ import annotations

import re

import regopy

from proxy.policy.engine import PolicyLoadError


def node_text(node: regopy.Node) -> str:
    """An error sequence node as rego-cpp's s-expression text (its children carry it)."""
    return "\n".join(node.at(i).json() for i in range(len(node)))


_ERRMSG = re.compile(rb"\(errormsg (\d+):")
_ERRLOC = re.compile(rb"\(error (\d+):")


def error_text(text: str) -> str:
    """The messages of rego-cpp's s-expression errors: ``(errormsg 24:Invalid ...)``."""
    raw = text.encode("utf-8", "replace")
    return "; ".join(
        raw[m.end() : m.end() + int(m.group(1))].decode("utf-8", "replace")
        for m in _ERRMSG.finditer(raw)
    )


def load_error(text: str, modules: dict[str, str]) -> PolicyLoadError:
    """``file:line:col: message`` from a parse error, whose location is a byte offset."""
    raw = text.encode("utf-8", "replace")
    first_path: str | None = None
    first_line: int | None = None
    messages = []
    for m in _ERRLOC.finditer(raw):
        start = m.end()
        name = raw[start : start + int(m.group(1))].decode("utf-8", "replace")
        loc = re.match(rb"\|(\d+)\|", raw[start + int(m.group(1)) :])
        msg = _ERRMSG.search(raw, start)
        message = (
            raw[msg.end() : msg.end() + int(msg.group(1))].decode("utf-8", "replace")
            if msg
            else "syntax error"
        )
        if loc and name in modules:
            offset = int(loc.group(1))
            before = modules[name].encode("utf-8")[:offset]
            line = before.count(b"\n") + 1
            col = len(before) - (before.rfind(b"\n") + 1) + 1
            messages.append(f"{name}:{line}:{col}: {message}")
            if first_path is None:
                first_path, first_line = name, line
        else:
            messages.append(f"{name or 'policy'}: {message}")
    if not messages:
        messages = [error_text(text) or text.strip() or "the policies do not compile"]
    return PolicyLoadError("\n".join(messages), path=first_path, line=first_line)
