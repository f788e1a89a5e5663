"""The embedded policy engine: Rego evaluated in process by regopy (rego-cpp).

The policies are compiled once, at load, into a bundle with one plan per entrypoint
(the decision query and ``data.hitl.intercept``); each evaluation only sets the input
and runs a plan. regopy's own errors and oddities are translated here, and only here:

- a parse error raises ``RegoError`` whose text is an s-expression carrying the module
  name and a byte offset; ``PolicyLoadError`` turns it into ``file:line:col: message``;
- other compile errors give a bundle that is not ``ok()``, without a location;
- evaluation errors (conflicts, and builtin errors: ``strict_built_in_errors`` is on, so
  ``to_number("x")`` fails instead of quietly producing malformed output) give an output
  that is not ``ok()``; a few (recursion) give output that is not JSON at all;
- an undefined result is ``undefined``, including for a rule that does not exist, so the
  load checks that the decision rule is declared somewhere.

The input is built through rego-cpp's C input calls directly, with strings escaped
the way rego-cpp keeps them: ``regopy.Input`` passes them raw, which breaks comparisons
and output for any string holding a quote or a backslash (see ``_cstr``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import regopy
import yaml

from proxy.errors import ConfigError, PolicyError
from proxy.model import Decision
from proxy.policy.decision import parse_decision
from proxy.policy.engine import INTERCEPT_QUERY, PolicyLoadError
from proxy.policy.input_refs import InputRefs, input_refs, prune, pure

DATA_FILES = ("data.json", "data.yaml", "data.yml")
_QUERY = re.compile(r"data(\.[A-Za-z_][A-Za-z0-9_]*)+")
_PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^(test_\w*)\b(?!\s*\()", re.MULTILINE)
_UNDEFINED = object()
CACHE_ENTRIES = 4096
CACHE_KEY_LIMIT = 4096  # characters of an input as JSON; a bigger one is evaluated every time
_INPUT_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, ctypes.ArgumentError)


@dataclasses.dataclass(frozen=True, slots=True)
class TestResult:
    __test__ = False  # not a pytest class

    name: str
    package: str
    passed: bool
    error: str | None = None
    file: str | None = None  # where the test rule is written, for the report
    line: int | None = None


class EmbeddedEngine:
    def __init__(
        self, rego: regopy.Interpreter, bundle: regopy.Bundle, query: str, description: str,
        refs: InputRefs = None, cache: bool = False,
    ) -> None:
        self._rego: regopy.Interpreter | None = rego
        self._bundle: regopy.Bundle | None = bundle
        self._query = query
        self._entrypoint = _entrypoint(query)
        self._intercept = _entrypoint(INTERCEPT_QUERY)
        self._description = description
        self._refs = refs  # the parts of the input the policies can read (input_refs.py)
        # Decisions by input, for pure policies: agents repeat themselves (the same poll, the
        # same retry), and rego-cpp takes 100-600 µs to answer what it answered before.
        self._cache: OrderedDict[tuple[str, str], Any] | None = OrderedDict() if cache else None
        self._lock = threading.Lock()  # one interpreter: one evaluation at a time

    @classmethod
    def load(cls, paths: Sequence[Path], query: str = "data.hitl.decision") -> EmbeddedEngine:
        if not _QUERY.fullmatch(query):
            raise ConfigError(
                "policy.query", f"{query!r} is not a rule path such as data.hitl.decision"
            )
        modules, data_files = _collect(paths)
        if not modules:
            where = ", ".join(str(p) for p in paths) or "(no paths configured)"
            raise PolicyLoadError(
                f"no policy files under {where}: the gate will not start without a policy "
                "(no silent allow-all)"
            )
        _check_declared(query, modules)
        entrypoints = list(dict.fromkeys([_entrypoint(query), _entrypoint(INTERCEPT_QUERY)]))
        try:
            rego, bundle = _compile(modules, data_files, entrypoints)
        except PolicyLoadError as whole:
            raise _each_file_error(modules, whole) from None
        roots = ", ".join(str(p) for p in paths)
        description = (
            f"embedded (regopy {regopy.__version__}): {_plural(len(modules), 'policy file')}, "
            f"{_plural(len(data_files), 'data file')} under {roots}; query {query}"
        )
        sources = modules.values()
        return cls(rego, bundle, query, description, input_refs(sources), cache=pure(sources))

    async def decide(self, input: dict[str, Any]) -> Decision:
        value = self._evaluate(self._entrypoint, input)
        if value is _UNDEFINED:
            raise PolicyError(f"policy decision is undefined ({self._query} has no value)")
        return parse_decision(value)

    async def intercept(self, input: dict[str, Any]) -> bool:
        value = self._evaluate(self._intercept, input)
        if value is _UNDEFINED:
            return True
        if not isinstance(value, bool):
            raise PolicyError(f"{INTERCEPT_QUERY} must be true or false, not {json.dumps(value)}")
        return value

    def describe(self) -> str:
        return self._description

    def close(self) -> None:
        with self._lock:
            self._bundle = None
            self._rego = None

    def _evaluate(self, entrypoint: str, input: dict[str, Any]) -> Any:
        doc = prune(input, self._refs)
        with self._lock:
            if self._rego is None or self._bundle is None:
                raise PolicyError("the policy engine is closed")
            key = self._cache_key(entrypoint, doc)
            if key is not None and (value := self._cache.get(key, _UNDEFINED)) is not _UNDEFINED:  # type: ignore[union-attr]
                self._cache.move_to_end(key)  # type: ignore[union-attr]
                return value  # shared, never mutated: decide() and intercept() only read it
            try:
                _set_input(self._rego, doc)
            except (regopy.RegoError, *_INPUT_ERRORS) as exc:
                raise PolicyError(f"the input cannot be passed to the policy: {exc}") from exc
            value = _result(self._rego, self._bundle, entrypoint)  # errors are never cached
            if key is not None:
                self._cache[key] = value  # type: ignore[index]
                if len(self._cache) > CACHE_ENTRIES:  # type: ignore[arg-type]
                    self._cache.popitem(last=False)  # type: ignore[union-attr]
            return value

    def _cache_key(self, entrypoint: str, doc: dict[str, Any]) -> tuple[str, str] | None:
        if self._cache is None:
            return None
        try:
            text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return None  # not JSON: evaluating it raises the proper PolicyError
        return (entrypoint, text) if len(text) <= CACHE_KEY_LIMIT else None


def run_tests(paths: Sequence[Path]) -> list[TestResult]:
    """Run the ``test_*`` rules of the ``*_test.rego`` files under ``paths``.

    Each test rule is evaluated with the policies and data it sits with; it passes when
    its value is true, fails when it is false or undefined, and fails with the error
    when it errs. Raises ``PolicyLoadError`` when the files do not compile.

    The tests run in a child process: rego-cpp aborts the whole process on some
    constructs (``with input as {…}`` against rules that call builtins, common in tests),
    and that must be a readable failure, not the end of the command.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    child = subprocess.run(
        [sys.executable, "-c", "from proxy.policy.embedded import _tests_child; _tests_child()"],
        input=json.dumps([str(p) for p in paths]),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = child.stdout.strip().splitlines()
    if child.returncode != 0 or not lines:
        crash = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        hint = ""
        if "with input as" in "".join(_collect(paths, tests=True)[0].values()):
            hint = (
                "; rego-cpp cannot take `with input as {…}` here: replace the input path "
                "by path (`with input.request as r with input.agent as a`)"
            )
        where = ", ".join(str(p) for p in paths)
        raise PolicyLoadError(
            f"the policy tests under {where} crashed regopy: {crash.strip()}{hint}"
        )
    answer = json.loads(lines[-1])
    if "load_error" in answer:
        error = answer["load_error"]
        raise PolicyLoadError(error["message"], path=error["path"], line=error["line"])
    return [TestResult(**result) for result in answer["results"]]


def _tests_child() -> None:
    paths = [Path(p) for p in json.loads(sys.stdin.read())]
    try:
        results = _run_tests_here(paths)
    except PolicyLoadError as exc:
        error = {"message": exc.message, "path": exc.path, "line": exc.line}
        print(json.dumps({"load_error": error}))
        return
    print(json.dumps({"results": [dataclasses.asdict(r) for r in results]}))


def _run_tests_here(paths: Sequence[Path]) -> list[TestResult]:
    modules, data_files = _collect(paths, tests=True)
    # (package, rule, file, line) of each test rule, in file order
    tests: list[tuple[str, str, str, int]] = []
    packages: list[str] = []
    for name, source in modules.items():
        found = _PACKAGE.search(source)
        if found is None:
            continue
        packages.append(found.group(1))
        if name.endswith("_test.rego"):
            seen: set[str] = set()
            for m in _TEST_RULE.finditer(source):
                if m.group(1) not in seen:
                    seen.add(m.group(1))
                    tests.append((found.group(1), m.group(1), name, source.count("\n", 0, m.start()) + 1))
    entrypoints = [f"{package.replace('.', '/')}/{rule}" for package, rule, _, _ in tests]
    # With no tests, every file is still compiled: a syntax error must not hide behind
    # "no tests found".
    compiled = list(dict.fromkeys(entrypoints)) or [
        f"{(packages or ['hitl'])[0].replace('.', '/')}/decision"
    ]
    try:
        rego, bundle = _compile(modules, data_files, compiled)
    except PolicyLoadError as whole:
        raise _each_file_error(modules, whole) from None
    results = []
    for (package, rule, file, line), entrypoint in zip(tests, entrypoints, strict=True):
        try:
            value = _result(rego, bundle, entrypoint)
        except PolicyError as exc:
            results.append(TestResult(rule, package, False, exc.message, file, line))
        else:
            results.append(TestResult(rule, package, value is True, None, file, line))
    return results


def _each_file_error(modules: dict[str, str], whole: PolicyLoadError) -> PolicyLoadError:
    """The compile errors of every file, not only the first one rego-cpp stops at: each
    file is compiled alone; an error that only shows with all files together is ``whole``."""
    lines: list[str] = []
    first: PolicyLoadError | None = None
    for name, source in modules.items():
        found = _PACKAGE.search(source)
        package = found.group(1).replace(".", "/") if found else "hitl"
        try:
            _compile({name: source}, [], [f"{package}/decision"])
        except PolicyLoadError as exc:
            first = first or exc
            lines.extend(exc.message.splitlines())
    if not lines:
        return whole
    assert first is not None
    return PolicyLoadError("\n".join(lines), path=first.path, line=first.line)


# --- Loading ----------------------------------------------------------------------


DataFile = tuple[Path, tuple[str, ...]]  # the file, and where it sits under data


def _collect(paths: Sequence[Path], tests: bool = False) -> tuple[dict[str, str], list[DataFile]]:
    """Rego sources by file name, and data files, in a stable order.

    A data file in a sub-folder of a configured path sits under that folder's path in
    ``data``, as OPA loads it.
    """
    modules: dict[str, str] = {}
    data_files: list[DataFile] = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise PolicyLoadError(f"policy path {root} does not exist", path=str(root))
        if root.is_file():
            files = [root]
        else:
            files = sorted(
                p
                for p in root.rglob("*")
                if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts)
            )
        for path in files:
            if path.name in DATA_FILES:
                namespace = () if path == root else path.parent.relative_to(root).parts
                data_files.append((path, namespace))
            elif path.suffix == ".rego" and (tests or not path.name.endswith("_test.rego")):
                modules[str(path)] = _read(path)
    return modules, data_files


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"{path}: cannot read: {exc}", path=str(path)) from exc


def _load_data(data_files: list[DataFile]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path, namespace in data_files:
        text = _read(path)
        try:
            doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except json.JSONDecodeError as exc:
            raise PolicyLoadError(
                f"{path}:{exc.lineno}: {exc.msg}", path=str(path), line=exc.lineno
            ) from exc
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            where = f"{path}:{line}" if line else str(path)
            problem = getattr(exc, "problem", None) or str(exc)
            raise PolicyLoadError(f"{where}: {problem}", path=str(path), line=line) from exc
        if doc is None:
            continue
        try:
            json.dumps(doc, allow_nan=False)
        except (TypeError, ValueError) as exc:  # YAML dates, .nan, …
            raise PolicyLoadError(f"{path}: not a JSON document: {exc}", path=str(path)) from exc
        if not namespace and not isinstance(doc, dict):
            raise PolicyLoadError(f"{path}: a data document must be an object", path=str(path))
        for key in reversed(namespace):
            doc = {key: doc}
        _merge(merged, doc, path, ())
    return merged


def _merge(into: dict[str, Any], doc: dict[str, Any], path: Path, at: tuple[str, ...]) -> None:
    for key, value in doc.items():
        if key in into and isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value, path, (*at, key))
        elif key in into:
            dotted = ".".join((*at, key))
            raise PolicyLoadError(
                f"{path}: data.{dotted} is already set by another data file", path=str(path)
            )
        else:
            into[key] = value


def _compile(
    modules: dict[str, str], data_files: list[DataFile], entrypoints: list[str]
) -> tuple[regopy.Interpreter, regopy.Bundle]:
    rego = regopy.Interpreter()
    rego.log_level = regopy.LogLevel.NONE  # errors come back to us; none printed to stderr
    rego.strict_built_in_errors = True
    data = _load_data(data_files)
    try:
        if data:
            rego.add_data(data)
        for name, source in modules.items():
            rego.add_module(name, source)
        bundle = rego.build(None, entrypoints)
    except regopy.RegoError as exc:
        raise _load_error(str(exc), modules) from exc
    if not bundle.ok():
        problem = _error_text(_node_text(bundle.node())) or "the policies do not compile"
        where = next(iter(modules)) if len(modules) == 1 else ", ".join(modules)
        raise PolicyLoadError(f"{where}: {problem}")
    return rego, bundle


def _check_declared(query: str, modules: dict[str, str]) -> None:
    """rego-cpp answers "undefined" for a rule that does not exist: refuse that at load."""
    parts = query.split(".")[1:]
    for source in modules.values():
        for match in _PACKAGE.finditer(source):
            package = match.group(1).split(".")
            if parts[: len(package)] == package and len(parts) > len(package):
                rule = re.escape(parts[len(package)])
                if re.search(
                    rf"^\s*(default\s+)?{rule}\s*(:=|=|if\b|contains\b|\{{|\[)",
                    source,
                    re.MULTILINE,
                ):
                    return
    raise PolicyLoadError(
        f"no rule declares {query} in {', '.join(modules)}: every request would be denied"
    )


def _entrypoint(query: str) -> str:
    return query.removeprefix("data.").replace(".", "/")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --- Results and errors -------------------------------------------------------------


def _result(rego: regopy.Interpreter, bundle: regopy.Bundle, entrypoint: str) -> Any:
    """The value of an entrypoint for the current input, or _UNDEFINED; else PolicyError."""
    try:
        out = rego.query_bundle_entrypoint(bundle, entrypoint)
    except regopy.RegoError as exc:
        problem = _error_text(str(exc)) or str(exc)
        raise PolicyError(f"policy evaluation failed: {problem}") from exc
    except json.JSONDecodeError as exc:
        # regopy parses rego-cpp's output itself; some failures (recursion) come out as text.
        problem = _error_text(exc.doc) or "the policy produced a value that is not JSON"
        raise PolicyError(f"policy evaluation failed: {problem}") from exc
    if not out.ok():
        problem = _error_text(_node_text(out.node())) or "unknown error"
        raise PolicyError(f"policy evaluation failed: {problem}")
    if not out.results or not out.results[0].expressions:
        return _UNDEFINED
    return out.results[0].expressions[0]


def _node_text(node: regopy.Node) -> str:
    """An error sequence node as rego-cpp's s-expression text (its children carry it)."""
    return "\n".join(node.at(i).json() for i in range(len(node)))


_ERRMSG = re.compile(rb"\(errormsg (\d+):")
_ERRLOC = re.compile(rb"\(error (\d+):")


def _error_text(text: str) -> str:
    """The messages of rego-cpp's s-expression errors: ``(errormsg 24:Invalid ...)``."""
    raw = text.encode("utf-8", "replace")
    return "; ".join(
        raw[m.end() : m.end() + int(m.group(1))].decode("utf-8", "replace")
        for m in _ERRMSG.finditer(raw)
    )


def _load_error(text: str, modules: dict[str, str]) -> PolicyLoadError:
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
        messages = [_error_text(text) or text.strip() or "the policies do not compile"]
    return PolicyLoadError("\n".join(messages), path=first_path, line=first_line)


# --- Input ------------------------------------------------------------------------
#
# rego-cpp keeps a string as its escaped JSON text, and regopy.Input hands it raw
# strings: a value holding `"` or `\` then compares wrong (input.s == "a\"b" is false
# when it should be true) and comes back as malformed JSON. We build the same input
# through the same C calls, escaping strings first. That is also about twice as fast
# as regopy.Input, whose layers cost more than the C calls; with regopy internals other
# than these, fall back to the JSON term (correct, about twice as slow again).

_INT64 = 2**63


def _set_input(rego: regopy.Interpreter, doc: Any) -> None:
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
