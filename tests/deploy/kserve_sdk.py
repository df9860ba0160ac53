"""KServe's resources as its Python SDK models them: each generated model class's type table
(`openapi_types`), its field names (`attribute_map`) and its required fields, read from the
installed SDK's files with `ast` (importing the SDK would start a model server's imports).

`check(doc, "V1beta1InferenceService")` lists every field the SDK does not know, every value
of the wrong type and every required field missing; Kubernetes types inside (containers,
metadata) are handed to `kubernetes`, which validates them against the Kubernetes schemas.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Model:
    types: dict[str, str]  # python attribute -> SDK type, e.g. 'list[V1Container]'
    names: dict[str, str]  # python attribute -> field name in YAML
    required: frozenset[str]  # python attributes


@cache
def models() -> dict[str, Model]:
    spec = importlib.util.find_spec("kserve")  # finds the package without importing it
    assert spec is not None and spec.origin, "kserve is not installed (make install does it)"
    out = {}
    for path in (Path(spec.origin).parent / "models").glob("*.py"):
        source = path.read_text()
        for cls in ast.parse(source).body:
            if not isinstance(cls, ast.ClassDef):
                continue
            tables: dict[str, dict[str, str]] = {}
            for stmt in cls.body:
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
                if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
                    tables[target.id] = ast.literal_eval(stmt.value)  # type: ignore[union-attr]
            if len(tables) == 2:
                body = ast.get_source_segment(source, cls) or ""
                required = re.findall(r"client_side_validation and (\w+) is None", body)
                out[cls.name] = Model(
                    tables["openapi_types"], tables["attribute_map"], frozenset(required)
                )
    return out


PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "object": (object,),
}


def check(
    doc: Any, kind: str, kubernetes: Callable[[str, Any], list[str]], at: str = ""
) -> list[str]:
    """Problems of `doc` as a `kind` (an SDK type string); [] when there are none."""
    if m := re.fullmatch(r"list\[(.+)\]", kind):
        if not isinstance(doc, list):
            return [f"{at}: a list of {m.group(1)}, not {type(doc).__name__}"]
        return [
            e
            for i, item in enumerate(doc)
            for e in check(item, m.group(1), kubernetes, f"{at}[{i}]")
        ]
    if m := re.fullmatch(r"dict\(str, (.+)\)", kind):
        if not isinstance(doc, dict):
            return [f"{at}: a mapping, not {type(doc).__name__}"]
        return [e for k, v in doc.items() for e in check(v, m.group(1), kubernetes, f"{at}.{k}")]
    if kind in PRIMITIVES:
        # bool is an int to Python: only a bool or object field takes one.
        ok = isinstance(doc, PRIMITIVES[kind]) and (
            kind in ("bool", "object") or not isinstance(doc, bool)
        )
        return [] if ok else [f"{at}: a {kind}, not {doc!r}"]
    model = models().get(kind)
    if model is None:  # a Kubernetes type: the Kubernetes schemas decide
        return [f"{at}: {e}" for e in kubernetes(kind, doc)]
    if not isinstance(doc, dict):
        return [f"{at}: a {kind} mapping, not {type(doc).__name__}"]
    by_name = {name: attr for attr, name in model.names.items()}
    problems = [f"{at}.{k}: not a field of {kind}" for k in doc if k not in by_name]
    problems += [
        f"{at}: {kind} requires '{model.names[attr]}'"
        for attr in model.required
        if model.names[attr] not in doc
    ]
    for k, v in doc.items():
        if k in by_name:
            problems += check(v, model.types[by_name[k]], kubernetes, f"{at}.{k}")
    return problems
