"""Routes: a request evaluated against a bundle that holds only the packages it reaches.

Why: rego-cpp walks the whole bundle before every query (it verifies the bytecode it is
about to run), so every module costs about 7 µs per evaluation even when the request
never gets to it. The shipped policies hold five use cases and a request reaches at
most one or two of them: an allowed GET to an unlisted host spends 40 of its 90 µs in
rego-cpp on modules it never evaluates.

Theory of operation
-------------------

Rule 1. A route is the full set of policies in which the modules of some packages are
replaced by one tripwire module per package: for every rule the package defines (read
from the compiled full bundle, so none is missed, ref heads and functions included), a
rule of the same path and arity whose evaluation fails with an error that names the
package. Data is the same in every route.

Rule 2. Rego evaluates a rule only when something refers to it, and nothing else
reaches a rule's value (no side effects, no order). An evaluation on a route that
never evaluates a tripwire has read only rules that are identical in the full bundle:
its answer is the full bundle's answer.

Rule 3. Any other outcome on a route — a tripwire, an error, an output that cannot be
read — is thrown away and the same input is evaluated on the full bundle, whose answer
(or error) is the engine's. A route can cost a second evaluation; it can never change
a decision, turn an error into an answer, or turn an answer into an error.

Rule 4. Which packages a request needs is learned per host (``input.request.host``,
as the gate canonicalizes it): a host starts with the packages that declare the
entrypoints; a tripwire adds its package to the host's set; a failure that names no
tripwire sends the host to the full bundle for good.

Rule 5. Route bundles are compiled on the engine's thread, never on the event loop;
until a route is ready its requests use the full bundle. A route that does not compile
is never used.

Operators' policies need nothing for this: any package layout is routed the same way,
and a policy that reaches everything (``data.hitl`` as a whole, ``walk(data)``) only
trips once per host and then stays on the full bundle.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import regopy

from proxy.policy.engine import PolicyLoadError
from proxy.policy.rego_files import PACKAGE, DataFile

HOSTS = 4096  # hosts remembered, least recently used first out
ROUTES = 16  # route bundles kept; a host whose set would need more uses the full bundle
FULL: frozenset[str] = frozenset({"*"})  # the set of a host that uses the full bundle

_STUB_MODULE = "hitl-route-tripwire:{}.rego"
_TRIPPED = re.compile(r"hitl-route-tripwire ([A-Za-z_][\w.]*) ")


Compiled = tuple[regopy.Interpreter, regopy.Bundle]
# embedded.compile_policies: modules, data files, entrypoints → a bundle, or PolicyLoadError
Compile = Callable[[dict[str, str], list[DataFile], list[str]], Compiled]


class Router:
    """The packages each host needs, and a bundle for each set of packages."""

    def __init__(self, modules: dict[str, str], data_files: list[DataFile],
                 entrypoints: list[str], stubs: dict[str, str], compile: Compile,
                 rules: frozenset[tuple[str, int]]) -> None:
        self._compile = compile
        self._rules = rules  # every rule of the full bundle: (path, arity)
        self._modules = modules
        self._data_files = data_files
        self._entrypoints = entrypoints
        self._stubs = stubs  # package → tripwire source, for every package that can be left out
        self._start = frozenset(packages_of(modules)) - frozenset(stubs)
        self._hosts: OrderedDict[Any, frozenset[str]] = OrderedDict()
        self._bundles: dict[frozenset[str], Compiled | None] = {}  # None: does not compile

    @classmethod
    def prepare(cls, modules: dict[str, str], data_files: list[DataFile], entrypoints: list[str],
                compile: Compile) -> Router | None:
        """A router for these policies, or None when no package can be left out. Compiles
        the policies once more, to read every rule back from the bundle."""
        packages = packages_of(modules)
        entry = {owner(e.split("/"), packages) for e in entrypoints}
        if None in entry or len(packages) < 2:
            return None
        rules = rule_paths(*compile(modules, data_files, entrypoints))
        stubs = {
            package: tripwire(package, [(path, arity) for path, arity in rules
                                        if owner(path[:-1], packages, rule=False) == package])
            for package in packages - entry - reached_from_above(modules, packages)
        }
        if not stubs:
            return None
        return cls(modules, data_files, entrypoints, stubs, compile, frozenset(rules_set(rules)))

    def route(self, host: Any) -> tuple[frozenset[str], Compiled | None]:
        """The host's set of packages and its bundle (None: use the full bundle)."""
        key = host if isinstance(host, str) else None
        needed = self._hosts.get(key)
        if needed is None:
            needed = self._start
            if len(self._hosts) >= HOSTS:
                self._hosts.popitem(last=False)
            self._hosts[key] = needed
        else:
            self._hosts.move_to_end(key)
        return needed, self._bundles.get(needed)

    def missing(self, needed: frozenset[str]) -> bool:
        """True when this set has no bundle yet and one may be compiled for it."""
        return needed is not FULL and needed not in self._bundles and len(self._bundles) < ROUTES

    def build(self, needed: frozenset[str]) -> Compiled | None:
        """The route for this set, or None when it does not compile. Reads nothing that
        changes: runs on the engine's thread while the loop evaluates (rule 5)."""
        modules = {name: source for name, source in self._modules.items()
                   if package_of(source) not in self._stubs or package_of(source) in needed}
        for package, source in self._stubs.items():
            if package not in needed:
                modules[_STUB_MODULE.format(package)] = source
        try:
            route = self._compile(modules, self._data_files, self._entrypoints)
            # Every rule of the full bundle, no more, no fewer, as the original or its tripwire.
            same = rules_set(rule_paths(*route)) == self._rules
        except (PolicyLoadError, regopy.RegoError, OSError, ValueError, KeyError, TypeError):
            return None  # never used
        return route if same else None

    def install(self, needed: frozenset[str], route: Compiled | None) -> None:
        self._bundles[needed] = route

    def tripped(self, host: Any, needed: frozenset[str], error: str) -> None:
        """A route failed for this host: learn the package it reached (rule 4)."""
        key = host if isinstance(host, str) else None
        found = {m.group(1) for m in _TRIPPED.finditer(error)} & set(self._stubs)
        grown = needed | found if found and not found <= needed else FULL
        self._hosts[key] = grown


def rules_set(rules: list[tuple[list[str], int]]) -> set[tuple[str, int]]:
    return {(".".join(path), arity) for path, arity in rules}


def reached_from_above(modules: dict[str, str], packages: set[str]) -> set[str]:
    """The packages into which a module of an enclosing package writes rules through a
    ref head (``package hitl`` with ``lib.extra := 1`` writes into ``hitl.lib``): the rule
    would have definitions on both sides of a route, so such a package is never left out.
    Read from the text, generously: any line that begins with ``name.`` or ``name[``,
    indented or not (a call such as ``lib.who(a)`` in a rule body counts too)."""
    reached = set()
    for source in modules.values():
        outer = package_of(source)
        for package in packages:
            if outer is None or not package.startswith(outer + "."):
                continue
            first = re.escape(package[len(outer) + 1:].split(".")[0])
            if re.search(rf"^\s*(default\s+)?{first}\s*[.\[]", source, re.MULTILINE):
                reached.add(package)
    return reached


def packages_of(modules: dict[str, str]) -> set[str]:
    return {p for p in (package_of(source) for source in modules.values()) if p is not None}


def package_of(source: str) -> str | None:
    found = PACKAGE.search(source)
    return found.group(1) if found else None


def owner(path: list[str], packages: set[str], rule: bool = True) -> str | None:
    """The package that declares ``path``: the longest package that is a prefix of it
    (for a rule path, a proper prefix: ``hitl/decision`` is in ``hitl``)."""
    found = [package for package in packages
             if path[: len(package.split("."))] == package.split(".")
             and (len(path) > len(package.split(".")) or not rule)]
    return max(found, key=lambda package: len(package.split(".")), default=None)


def rule_paths(rego: regopy.Interpreter, bundle: regopy.Bundle) -> list[tuple[list[str], int]]:
    """Every rule of the compiled bundle: its path under data and its number of arguments
    (rego-cpp compiles each rule to a function of input, data and the arguments)."""
    with tempfile.TemporaryDirectory(prefix="hitl-route-") as tmp:
        rego.save_bundle(str(Path(tmp) / "bundle"), bundle)
        plan = json.loads((Path(tmp) / "bundle" / "plan.json").read_text(encoding="utf-8"))
    rules = []
    for func in plan["funcs"]["funcs"]:
        path = func["path"]
        if path[:1] == ["g0"]:
            rules.append((path[1:], len(func["params"]) - 2))
    return rules


def tripwire(package: str, rules: list[tuple[list[str], int]]) -> str:
    """A module of ``package`` in which every rule fails when evaluated. The failure
    depends on the input, so that no compiler can fold it away into a quiet undefined."""
    depth = len(package.split("."))
    lines = [f"package {package}", ""]
    fail = f'to_number(concat("", ["hitl-route-tripwire {package} ", type_name(input)]))'
    for path, arity in sorted(rules):
        head = ".".join(path[depth:])
        params = f"({', '.join('_' for _ in range(arity))})" if arity > 0 else ""
        lines.append(f"{head}{params} := {fail}")
    return "\n".join(lines) + "\n"
