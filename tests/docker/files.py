"""Read the Docker files the way Docker and Compose do, closely enough to test them without Docker.

Dockerfiles: instructions (continuations joined, comments dropped) grouped by stage. Compose:
the YAML, and `${VAR}` / `${VAR:-default}` / `${VAR-default}` interpolation. `.dockerignore`:
its patterns in order, the last match deciding, a pattern that matches a folder matching what
is in it (Docker's rules).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]
COMPOSE = DOCKER / "compose.yaml"


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """CMD/ENTRYPOINT ["a", "b"] -> [a, b]; HEALTHCHECK [flags] CMD [...] -> the CMD part."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in text else text.removeprefix("CMD ")
        return list(json.loads(text))

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """COPY --from=x --chmod=755 a b dest -> ({from: x, chmod: 755}, [a, b, dest])."""
        flags: dict[str, str] = {}
        words: list[str] = []
        for w in shlex.split(self.args):
            if w.startswith("--") and not words:
                key, _, value = w[2:].partition("=")
                flags[key] = value
            else:
                words.append(w)
        return flags, words


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def instructions(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit between continuation lines
        if not pending:
            start = n
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, args = " ".join(pending).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    return out


def stages(path: Path) -> list[Stage]:
    result: list[Stage] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(result))
            result.append(Stage(words[0], name))
        elif result:
            result[-1].instructions.append(ins)
    return result


def stage(path: Path, name: str) -> Stage:
    return next(s for s in stages(path) if s.name == name)


def inherited(path: Path, name: str, keyword: str) -> Instruction | None:
    """The instruction in force for a stage: its own last one, else its parent stage's."""
    by_name = {s.name: s for s in stages(path)}
    s: Stage | None = by_name[name]
    while s is not None:
        if (found := s.last(keyword)) is not None:
            return found
        s = by_name.get(s.image)
    return None


def arg_defaults(path: Path) -> dict[str, str]:
    out = {}
    for ins in instructions(path):
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of the forms this file uses, applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VAR.sub(one, value)


def service(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A compose service with its variables filled in from `env` (none set: the defaults)."""
    return dict(interpolate(compose()["services"][name], env or {}))


def environment(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else str(v) for k, v in raw.items()}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def ignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per pattern, in order."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((not keep, _pattern_regex(line.lstrip("!").strip("/"))))
    return rules


def ignored(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    verdict = False
    for excludes, regex in rules:
        if any(regex.match(p) for p in prefixes):
            verdict = excludes
    return verdict
