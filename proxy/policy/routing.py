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
back from the compiled policies, so none is missed, ref heads and functions included), a
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
as the gate canonicalizes it): a host starts with the packages that are never left out
(below); a tripwire adds its package to the host's set; a failure that names no
tripwire sends the host to the full bundle for good.

Rule 5. Routes are compiled in a child process started from the engine's thread, never
on the event loop, and loaded from the binary bundle the child writes (compiling in the
gate would leave it 10-35 MiB heavier for good; a loaded route costs about 0.1 MiB).
Until a route is ready its requests use the full bundle. A route that does not compile
is never used; at most ``ROUTES`` exist.

Never left out: the packages of the entrypoints, and a package that an enclosing
package writes rules into through ref heads (``lib.extra := 1`` in ``package hitl``),
whose rules would have definitions on both sides of a route. Policies whose package
lines are not plain dotted names, or whose rule values rego-cpp folds into data, get no
routes at all.

Operators' policies need nothing for this: any package layout is routed the same way,
and a policy that reaches everything (``data.hitl`` as a whole, ``walk(data)``) only
trips once per host and then stays on the full bundle. A request that carries the
tripwire's text can at worst make its host learn more packages than it needs: slower,
never different.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import regopy

from proxy.policy.rego_files import PACKAGE, DataFile, load_data

HOSTS = 4096  # hosts remembered, least recently used first out
ROUTES = 8  # route bundles kept (1-3 MiB each); a host whose set would need more uses the full bundle
FULL: frozenset[str] = frozenset({"*"})  # the set of a host that uses the full bundle

_STUB_MODULE = "hitl-route-tripwire:{}.rego"
_TRIPWIRE = "hitl_route_tripwire__"  # the one failing rule of a tripwire module
_TRIPPED = re.compile(r"hitl-route-tripwire ([A-Za-z_][\w.]*) ")
# A package line the router can read whole: a dotted name (no string keys), then nothing.
_PACKAGE_LINE = re.compile(r"^package\s+[A-Za-z_][\w.]*\s*(#.*)?$", re.MULTILINE)

Rules = list[tuple[list[str], int]]  # (path under data, number of arguments) of every rule


class Router:
    """The packages each host needs, and a bundle for each set of packages."""

    def __init__(self, modules: dict[str, str], data_files: list[DataFile],
                 entrypoints: list[str], stubs: dict[str, str]) -> None:
        self._modules = modules
        self._data_files = data_files
        self._entrypoints = entrypoints
        self._stubs = stubs  # package → tripwire source, for every package that can be left out
        self._start = frozenset(packages_of(modules)) - frozenset(stubs)
        self._hosts: OrderedDict[Any, frozenset[str]] = OrderedDict()
        self._bundles: dict[frozenset[str], regopy.Bundle | None] = {}  # None: not usable

    @classmethod
    def prepare(cls, modules: dict[str, str], data_files: list[DataFile],
                entrypoints: list[str]) -> Router | None:
        """A router for these policies, or None when no package can be left out. Reads
        every rule back from the compiled policies (rules_of)."""
        packages = packages_of(modules)
        entry = {owner(e.split("/"), packages) for e in entrypoints} - {None}
        if not entry or len(packages) < 2 or not all(
            (found := PACKAGE.search(source)) and _PACKAGE_LINE.match(source, found.start())
            for source in modules.values()
        ):
            return None
        rules = rules_of(modules, data_files, entrypoints)
        if rules is None:
            return None
        stubs = {
            package: tripwire(package, [(path, arity) for path, arity in rules
                                        if owner(path[:-1], packages, rule=False) == package])
            for package in packages - entry - reached_from_above(modules, packages)
        }
        return cls(modules, data_files, entrypoints, stubs) if stubs else None

    def route(self, host: Any) -> tuple[frozenset[str], regopy.Bundle | None]:
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

    def build(self, needed: frozenset[str]) -> regopy.Bundle | None:
        """The route for this set, or None when it does not compile. Reads nothing that
        changes: runs on the engine's thread while the loop evaluates (rule 5)."""
        modules = {name: source for name, source in self._modules.items()
                   if package_of(source) not in self._stubs or package_of(source) in needed}
        for package, source in self._stubs.items():
            if package not in needed:
                modules[_STUB_MODULE.format(package)] = source
        with tempfile.TemporaryDirectory(prefix="hitl-route-") as tmp:
            saved = Path(tmp) / "route.rbb"
            if _in_child({"modules": modules, "data_files": self._data_files,
                          "entrypoints": self._entrypoints, "save": str(saved)}) is not True:
                return None
            try:  # runs on the engine's interpreter; this one only reads the file
                bundle = regopy.Interpreter().load_bundle(str(saved), regopy.BundleFormat.Binary)
            except (regopy.RegoError, OSError):
                return None
        return bundle if bundle.ok() else None

    def install(self, needed: frozenset[str], route: regopy.Bundle | None) -> None:
        self._bundles[needed] = route

    def tripped(self, host: Any, needed: frozenset[str], error: str) -> None:
        """A route failed for this host: learn the package it reached (rule 4)."""
        key = host if isinstance(host, str) else None
        found = {m.group(1) for m in _TRIPPED.finditer(error)} & set(self._stubs)
        grown = needed | found if found and not found <= needed else FULL
        self._hosts[key] = grown


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


def rules_of(modules: dict[str, str], data_files: list[DataFile], entrypoints: list[str]) -> Rules | None:
    """Every rule of the compiled policies, or None when they cannot be read back (rego-cpp
    compiles each rule to a function of input, data and the rule's arguments, and lists
    them all in the bundle it saves)."""
    rules = _in_child({"modules": modules, "data_files": data_files, "entrypoints": entrypoints})
    if not isinstance(rules, list) or not rules:
        return None
    return [(list(path), int(arity)) for path, arity in rules]


def _in_child(job: dict[str, Any]) -> Any:
    """Compile in a child process, and answer its JSON line (None when it fails).

    Compiling and saving a bundle leaves 10-35 MiB in this process that the allocator
    never gives back; a route compiled in a child and loaded from its binary file costs
    the gate about 0.1 MiB."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    job = {**job, "data_files": [[str(p), list(ns)] for p, ns in job["data_files"]]}
    try:
        child = subprocess.run(
            [sys.executable, "-c", "from proxy.policy.routing import _child; _child()"],
            input=json.dumps(job), capture_output=True, text=True, env=env, timeout=120, check=False,
        )
        return json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _child() -> None:
    """The child of ``_in_child``: with "save", the bundle written there (answers true);
    without, every rule of the bundle (null when rule values were folded into data,
    which tripwires could not cover)."""
    from proxy.policy.embedded import compile_policies  # embedded imports this module

    job = json.loads(sys.stdin.read())
    data_files: list[DataFile] = [(Path(p), tuple(ns)) for p, ns in job["data_files"]]
    rego, bundle = compile_policies(job["modules"], data_files, job["entrypoints"])
    if "save" in job:
        rego.save_bundle(job["save"], bundle, regopy.BundleFormat.Binary)
        print("true")
        return
    with tempfile.TemporaryDirectory(prefix="hitl-route-") as tmp:
        rego.save_bundle(str(Path(tmp) / "bundle"), bundle)
        plan = json.loads((Path(tmp) / "bundle" / "plan.json").read_text(encoding="utf-8"))
        data = json.loads((Path(tmp) / "bundle" / "data.json").read_text(encoding="utf-8"))
    rules = [(f["path"][1:], len(f["params"]) - 2) for f in plan["funcs"]["funcs"]
             if f["path"][:1] == ["g0"]]
    print(json.dumps(rules if data == load_data(data_files) else None))


def tripwire(package: str, rules: list[tuple[list[str], int]]) -> str:
    """A module of ``package`` in which every rule fails when evaluated: each refers to one
    rule that fails (rego-cpp verifies every statement of a bundle before each query, so
    one statement a rule is 5 µs cheaper on every request than a failure written out in
    each). The failure depends on the input, so that no compiler can fold it away into a
    quiet undefined; a package that has a rule of that name gets no route (it does not
    compile)."""
    depth = len(package.split("."))
    lines = [
        f"package {package}", "",
        f'{_TRIPWIRE} := to_number(concat("", ["hitl-route-tripwire {package} ", type_name(input)]))',
    ]
    for path, arity in sorted(rules):
        head = ".".join(path[depth:])
        params = f"({', '.join('_' for _ in range(arity))})" if arity > 0 else ""
        lines.append(f"{head}{params} := {_TRIPWIRE}")
    return "\n".join(lines) + "\n"
