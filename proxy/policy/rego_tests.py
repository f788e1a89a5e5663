"""``hitl-proxy policy test``: the ``test_*`` rules of the ``*_test.rego`` files, run in a
child process (rego-cpp aborts the whole process on some constructs)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.errors import PolicyError
from proxy.policy.embedded import compile_policies, each_file_error, query_value
from proxy.policy.engine import PolicyLoadError
from proxy.policy.rego_files import PACKAGE, collect

_TEST_RULE = re.compile(r"^(test_\w*)\b(?!\s*\()", re.MULTILINE)


@dataclasses.dataclass(frozen=True, slots=True)
class TestResult:
    __test__ = False  # not a pytest class

    name: str
    package: str
    passed: bool
    error: str | None = None
    file: str | None = None  # where the test rule is written, for the report
    line: int | None = None


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
        [sys.executable, "-c", "from proxy.policy.rego_tests import _tests_child; _tests_child()"],
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
        if "with input as" in "".join(collect(paths, tests=True)[0].values()):
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
    modules, data_files = collect(paths, tests=True)
    # (package, rule, file, line) of each test rule, in file order
    tests: list[tuple[str, str, str, int]] = []
    packages: list[str] = []
    for name, source in modules.items():
        found = PACKAGE.search(source)
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
        rego, bundle = compile_policies(modules, data_files, compiled)
    except PolicyLoadError as whole:
        raise each_file_error(modules, whole) from None
    results = []
    for (package, rule, file, line), entrypoint in zip(tests, entrypoints, strict=True):
        try:
            value = query_value(rego, bundle, entrypoint)
        except PolicyError as exc:
            results.append(TestResult(rule, package, False, exc.message, file, line))
        else:
            results.append(TestResult(rule, package, value is True, None, file, line))
    return results
