"""Loading policies from disk: the Rego sources and the data files under the configured
paths, the data merged as OPA merges it, and the check that the decision rule exists."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from proxy.policy.engine import PolicyLoadError

DATA_FILES = ("data.json", "data.yaml", "data.yml")
PACKAGE = re.compile(r"^package\s+([A-Za-z_][\w.]*)", re.MULTILINE)


DataFile = tuple[Path, tuple[str, ...]]  # the file, and where it sits under data


def collect(paths: Sequence[Path], tests: bool = False) -> tuple[dict[str, str], list[DataFile]]:
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
                modules[str(path)] = read_source(path)
    return modules, data_files


def read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"{path}: cannot read: {exc}", path=str(path)) from exc


def load_data(data_files: list[DataFile]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path, namespace in data_files:
        text = read_source(path)
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


def check_declared(query: str, modules: dict[str, str]) -> None:
    """rego-cpp answers "undefined" for a rule that does not exist: refuse that at load."""
    parts = query.split(".")[1:]
    for source in modules.values():
        for match in PACKAGE.finditer(source):
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
