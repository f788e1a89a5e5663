"""The docs cannot drift from the code: the README's runnable blocks run, every link and file
the docs name exists, nothing points outside the repository, and every command is documented.

A shell block in README.md is runnable when the line before its opening fence is
``<!-- runnable -->``. Such a block must work when pasted into a fresh clone after
``make install``: it runs with bash (``-e -o pipefail``) in a copy of the repository whose
``.venv`` is this one, with no ``HITL_*`` variables, and must exit 0 without a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli import build_parser
from tests.conftest import ROOT

RUNNABLE = re.compile(r"^<!-- runnable -->\n```(?:sh|bash|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=30)
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def runnable_blocks() -> list[str]:
    return RUNNABLE.findall((ROOT / "README.md").read_text())


def test_the_readme_marks_its_runnable_blocks() -> None:
    blocks = runnable_blocks()
    assert len(blocks) >= 4
    text = "\n".join(blocks)
    for command in ("config check", "policy test", "policy eval", "ca export", "hash-password"):
        assert command in text


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files as a fresh clone has them, with this .venv."""
    target = tmp_path_factory.mktemp("clone")
    for path in tracked_files():
        dest = target / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    (target / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return target


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_a_runnable_readme_block_works_when_pasted(clone: Path, index: int) -> None:
    block = runnable_blocks()[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, f"README block {index} failed:\n{block}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
    assert "Traceback" not in out.stderr + out.stdout


def test_nothing_in_the_repository_points_outside_it() -> None:
    outside = [re.compile("DESIGN" + r"(\.md|\s*§)"), re.compile("/work/" + "shared")]
    found = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in outside):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_link_and_docs_file_named_exists() -> None:
    missing = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} links {target}")
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for named in set(re.findall(r"\bdocs/[\w.-]+\.md\b", text)):
            if not (ROOT / named).exists():
                missing.append(f"{path.relative_to(ROOT)} names {named}")
    assert not missing, "\n".join(missing)


def test_every_command_is_in_the_readme_command_line_section() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Command line"):readme.index("## Review API")]
    lines = [line for line in section.splitlines() if line.startswith("hitl-proxy ")]

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = [path] if path else []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += walk(sub, (*path, name))
        return found

    for path in walk(build_parser(), ()):
        # "policy replay" is documented on the line of `hitl-proxy policy ...` as "replay"
        assert any(line.startswith(f"hitl-proxy {path[0]}") or f"| {path[0]}" in line or
                   f" {path[0]} " in line for line in lines), path
        assert any(path[-1] in line for line in lines), path
