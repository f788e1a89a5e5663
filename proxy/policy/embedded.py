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

Around it: ``rego_files`` loads the sources and data, ``rego_errors`` reads rego-cpp's
error text, ``rego_input`` builds the input through rego-cpp's C calls (``regopy.Input``
passes strings raw, which breaks comparisons for any string holding a quote or a
backslash), ``routing`` evaluates a request on a bundle that holds only the packages it
reaches, and ``rego_tests`` runs ``hitl-proxy policy test``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import regopy

from proxy.errors import ConfigError, PolicyError
from proxy.model import Decision
from proxy.policy.decision import parse_decision
from proxy.policy.engine import INTERCEPT_QUERY, PolicyLoadError, intercept_answer
from proxy.policy.input_refs import InputRefs, input_refs, prune, pure
from proxy.policy.rego_errors import error_text, load_error, node_text
from proxy.policy.rego_files import PACKAGE, DataFile, check_declared, collect, load_data
from proxy.policy.rego_input import INPUT_ERRORS, set_input
from proxy.policy.routing import Router

_QUERY = re.compile(r"data(\.[A-Za-z_][A-Za-z0-9_]*)+")
UNDEFINED = object()
CACHE_ENTRIES = 4096
CACHE_KEY_LIMIT = 4096  # characters of an input as JSON; a bigger one is evaluated every time
# Inputs whose body is larger are evaluated on the engine's own thread, not on the event loop:
# copying a big document into rego-cpp takes milliseconds (input.py bounds it). Smaller ones
# (nearly all) are evaluated in place: a thread hop would cost more than the evaluation.
INLINE_BODY_BYTES = 16 * 1024
# Routes (routing.py) are prepared once the engine has run this many evaluations: a busy
# gate gets them within a second; an engine that answers a handful of requests (a test, a
# reload that is soon replaced) never pays the 0.1-0.3 s of compiling them.
ROUTE_AFTER = 256

# What the engine compiled its bundle from, for routing: modules, data files, entrypoints.
Sources = tuple[dict[str, str], list[DataFile], list[str]]


class EmbeddedEngine:
    def __init__(
        self, rego: regopy.Interpreter, bundle: regopy.Bundle, query: str, description: str,
        refs: InputRefs = None, cache: bool = False, sources: Sources | None = None,
        route_after: int = ROUTE_AFTER,
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
        self._thread: ThreadPoolExecutor | None = None  # made on the first large input
        self._sources = sources
        self._route_after = route_after if sources is not None else -1  # -1: never route
        self._router: Router | None = None
        self._compiling: set[frozenset[str]] = set()

    @classmethod
    def load(
        cls, paths: Sequence[Path], query: str = "data.hitl.decision",
        route_after: int | None = ROUTE_AFTER,
    ) -> EmbeddedEngine:
        """The engine for the policies under ``paths``. ``route_after``: evaluations before
        routes are prepared (routing.py); None for none at all."""
        if not _QUERY.fullmatch(query):
            raise ConfigError(
                "policy.query", f"{query!r} is not a rule path such as data.hitl.decision"
            )
        modules, data_files = collect(paths)
        if not modules:
            where = ", ".join(str(p) for p in paths) or "(no paths configured)"
            raise PolicyLoadError(
                f"no policy files under {where}: the gate will not start without a policy "
                "(no silent allow-all)"
            )
        check_declared(query, modules)
        entrypoints = list(dict.fromkeys([_entrypoint(query), _entrypoint(INTERCEPT_QUERY)]))
        try:
            rego, bundle = compile_policies(modules, data_files, entrypoints)
        except PolicyLoadError as whole:
            raise each_file_error(modules, whole) from None
        roots = ", ".join(str(p) for p in paths)
        description = (
            f"embedded (regopy {regopy.__version__}): {_plural(len(modules), 'policy file')}, "
            f"{_plural(len(data_files), 'data file')} under {roots}; query {query}"
        )
        sources = modules.values()
        return cls(rego, bundle, query, description, input_refs(sources), cache=pure(sources),
                   sources=None if route_after is None else (modules, data_files, entrypoints),
                   route_after=route_after or 0)

    async def decide(self, input: dict[str, Any]) -> Decision:
        value = await self._judge(self._entrypoint, input)
        if value is UNDEFINED:
            raise PolicyError(f"policy decision is undefined ({self._query} has no value)")
        return parse_decision(value)

    async def intercept(self, input: dict[str, Any]) -> bool:
        value = await self._judge(self._intercept, input)
        return intercept_answer(value is not UNDEFINED, value)

    def describe(self) -> str:
        return self._description

    def settle(self) -> None:
        """Wait until the engine's thread has done what is queued on it (routes being
        compiled): for benchmarks and tests that measure or check the routed engine."""
        if self._thread is not None:
            self._thread.submit(lambda: None).result()

    def close(self) -> None:
        with self._lock:
            self._bundle = None
            self._rego = None
        if self._thread is not None:
            self._thread.shutdown(wait=False)

    async def _judge(self, entrypoint: str, input: dict[str, Any]) -> Any:
        """Evaluate in place when the input is small and the interpreter free; else on the
        engine's one thread, so the event loop serves other connections meanwhile (a small
        input never waits on the loop for a large one to finish)."""
        request = input.get("request")
        size = 0  # of the body handed over: a truncated one is not (input.py)
        if isinstance(request, dict) and not request.get("body_truncated"):
            size = request.get("body_size", 0)
        if size <= INLINE_BODY_BYTES and self._lock.acquire(blocking=False):
            try:
                return self._evaluate_locked(entrypoint, prune(input, self._refs))
            finally:
                self._lock.release()
        return await asyncio.get_running_loop().run_in_executor(self._executor(), self._evaluate,
                                                                entrypoint, input)

    def _executor(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hitl-policy")
        return self._thread

    def _evaluate(self, entrypoint: str, input: dict[str, Any]) -> Any:
        doc = prune(input, self._refs)
        with self._lock:
            return self._evaluate_locked(entrypoint, doc)

    def _evaluate_locked(self, entrypoint: str, doc: dict[str, Any]) -> Any:
        if self._rego is None or self._bundle is None:
            raise PolicyError("the policy engine is closed")
        key = self._cache_key(entrypoint, doc)
        if key is not None and (value := self._cache.get(key, UNDEFINED)) is not UNDEFINED:  # type: ignore[union-attr]
            self._cache.move_to_end(key)  # type: ignore[union-attr]
            return value  # shared, never mutated: decide() and intercept() only read it
        try:
            set_input(self._rego, doc)
        except (regopy.RegoError, *INPUT_ERRORS) as exc:
            raise PolicyError(f"the input cannot be passed to the policy: {exc}") from exc
        value = self._answer(entrypoint, doc)  # errors are never cached
        if key is not None:
            self._cache[key] = value  # type: ignore[index]
            if len(self._cache) > CACHE_ENTRIES:  # type: ignore[arg-type]
                self._cache.popitem(last=False)  # type: ignore[union-attr]
        return value

    def _answer(self, entrypoint: str, doc: dict[str, Any]) -> Any:
        """The entrypoint's value for the input already set: on the host's route when it
        has one, else (and whenever the route fails: routing.py, rule 3) on the full bundle."""
        assert self._rego is not None and self._bundle is not None
        router = self._router
        if router is None:
            if self._route_after >= 0:
                self._route_after -= 1
                if self._route_after < 0:
                    self._executor().submit(self._prepare_routes)
            return query_value(self._rego, self._bundle, entrypoint)
        request = doc.get("request")
        host = request.get("host") if isinstance(request, dict) else None
        needed, route = router.route(host)
        if route is None:
            if router.missing(needed) and needed not in self._compiling:
                self._compiling.add(needed)
                self._executor().submit(self._compile_route, needed)
            return query_value(self._rego, self._bundle, entrypoint)
        try:
            return query_value(self._rego, route, entrypoint, tripwire=True)
        except Tripped as exc:
            router.tripped(host, needed, exc.text)
        return query_value(self._rego, self._bundle, entrypoint)

    def _prepare_routes(self) -> None:
        """On the engine's thread: the router and its first route (routing.py, rule 5).
        Compiling uses interpreters of its own, so the loop goes on evaluating meanwhile
        (as a policy reload does); only handing the result over takes the lock."""
        assert self._sources is not None
        try:
            router = Router.prepare(*self._sources)
        except (PolicyLoadError, regopy.RegoError, OSError, ValueError, KeyError, TypeError):
            return  # the bundle cannot be read back: no routes, the full bundle serves
        if router is None:
            return
        start = router.route(None)[0]
        route = router.build(start)
        with self._lock:
            router.install(start, route)
            self._router = router

    def _compile_route(self, needed: frozenset[str]) -> None:
        router = self._router
        assert router is not None
        route = router.build(needed)
        with self._lock:
            router.install(needed, route)
            self._compiling.discard(needed)

    def _cache_key(self, entrypoint: str, doc: dict[str, Any]) -> tuple[str, str] | None:
        if self._cache is None:
            return None
        try:
            text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return None  # not JSON: evaluating it raises the proper PolicyError
        return (entrypoint, text) if len(text) <= CACHE_KEY_LIMIT else None


def each_file_error(modules: dict[str, str], whole: PolicyLoadError) -> PolicyLoadError:
    """The compile errors of every file, not only the first one rego-cpp stops at: each
    file is compiled alone; an error that only shows with all files together is ``whole``."""
    lines: list[str] = []
    first: PolicyLoadError | None = None
    for name, source in modules.items():
        found = PACKAGE.search(source)
        package = found.group(1).replace(".", "/") if found else "hitl"
        try:
            compile_policies({name: source}, [], [f"{package}/decision"])
        except PolicyLoadError as exc:
            first = first or exc
            lines.extend(exc.message.splitlines())
    if not lines:
        return whole
    assert first is not None
    return PolicyLoadError("\n".join(lines), path=first.path, line=first.line)


def compile_policies(
    modules: dict[str, str], data_files: list[DataFile], entrypoints: list[str]
) -> tuple[regopy.Interpreter, regopy.Bundle]:
    rego = regopy.Interpreter()
    rego.log_level = regopy.LogLevel.NONE  # errors come back to us; none printed to stderr
    rego.strict_built_in_errors = True
    data = load_data(data_files)
    try:
        if data:
            rego.add_data(data)
        for name, source in modules.items():
            rego.add_module(name, source)
        bundle = rego.build(None, entrypoints)
    except regopy.RegoError as exc:
        raise load_error(str(exc), modules) from exc
    if not bundle.ok():
        problem = error_text(node_text(bundle.node())) or "the policies do not compile"
        where = next(iter(modules)) if len(modules) == 1 else ", ".join(modules)
        raise PolicyLoadError(f"{where}: {problem}")
    return rego, bundle


def _entrypoint(query: str) -> str:
    return query.removeprefix("data.").replace(".", "/")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class Tripped(Exception):
    """An evaluation on a route failed; ``text`` is rego-cpp's error (routing.py, rule 3)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def query_value(
    rego: regopy.Interpreter, bundle: regopy.Bundle, entrypoint: str, tripwire: bool = False
) -> Any:
    """The value of an entrypoint for the current input, or UNDEFINED; else PolicyError
    (``Tripped`` instead, with the whole error text, when ``tripwire`` is set)."""
    try:
        out = rego.query_bundle_entrypoint(bundle, entrypoint)
    except regopy.RegoError as exc:
        if tripwire:
            raise Tripped(str(exc)) from exc
        problem = error_text(str(exc)) or str(exc)
        raise PolicyError(f"policy evaluation failed: {problem}") from exc
    except json.JSONDecodeError as exc:
        if tripwire:
            raise Tripped(exc.doc) from exc
        # regopy parses rego-cpp's output itself; some failures (recursion) come out as text.
        problem = error_text(exc.doc) or "the policy produced a value that is not JSON"
        raise PolicyError(f"policy evaluation failed: {problem}") from exc
    if not out.ok():
        text = node_text(out.node())
        if tripwire:
            raise Tripped(text)
        problem = error_text(text) or "unknown error"
        raise PolicyError(f"policy evaluation failed: {problem}")
    if not out.results or not out.results[0].expressions:
        return UNDEFINED
    return out.results[0].expressions[0]
