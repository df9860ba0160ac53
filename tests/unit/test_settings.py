"""Flags, then SEQSERVE_* environment, then defaults."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from serving.settings import OPTIONS, add_flags, defaults, from_args, limits, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(argv)


def test_defaults_bind_loopback() -> None:
    s = from_args(parse())
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.batch.max_batch_size == 64 and s.batch.max_delay_ms == 0
    assert s.batch.max_gap_ms == 0


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("SEQSERVE_PORT", "9000")
    s = from_args(parse("--port", "9100", "--max-delay-ms", "7", "--max-gap-ms", "3"))
    assert s.batch.max_batch_size == 7 and s.port == 9100 and s.batch.max_delay_ms == 7
    assert s.batch.max_gap_ms == 3


def test_a_switch_is_off_unless_its_flag_or_variable_turns_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert from_args(parse()).allow_updates is False
    assert from_args(parse("--allow-updates")).allow_updates is True
    monkeypatch.setenv("SEQSERVE_ALLOW_UPDATES", "1")
    assert from_args(parse()).allow_updates is True
    monkeypatch.setenv("SEQSERVE_ALLOW_UPDATES", "0")
    assert from_args(parse()).allow_updates is False


def test_a_bad_dispatch_is_refused() -> None:
    with pytest.raises(ValueError, match="--dispatch must be split or one"):
        from_args(parse("--dispatch", "all"))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("max_batch_size", 0, "--max-batch-size must be at least 1, not 0"),
        ("nnodes", -1, "--nnodes must be at least 1, not -1"),
        ("max_delay_ms", -0.5, "--max-delay-ms must be at least 0, not -0.5"),
        ("port", -1, "--port must be at least 0, not -1"),
    ],
)
def test_a_value_below_its_floor_is_refused(name: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        defaults(**{name: value})
    assert defaults(port=0, max_delay_ms=0.0).port == 0


def test_the_engine_flag_overrides_the_spec_or_is_refused() -> None:
    assert from_args(parse()).engine == ""  # the spec's sharding.engine decides
    assert from_args(parse("--engine", "distributed")).engine == "distributed"
    with pytest.raises(ValueError, match="--engine must be local or distributed"):
        from_args(parse("--engine", "dmp"))


def test_every_option_lands_in_exactly_one_setting() -> None:
    s = defaults()
    fields = {f.name: s for f in dataclasses.fields(s) if f.name not in ("limits", "batch")}
    fields |= {f.name: s.limits for f in dataclasses.fields(s.limits)}
    fields |= {f.name: s.batch for f in dataclasses.fields(s.batch)}
    assert sorted(fields) == sorted(o.name for o in OPTIONS)
    for o in OPTIONS:
        assert getattr(fields[o.name], o.name) == o.default, o.name
    assert defaults(max_queue=3).batch.max_queue == 3
    with pytest.raises(ValueError, match="unknown setting"):
        defaults(max_queues=3)


def test_the_documented_table_is_the_declared_one() -> None:
    page = (ROOT / "docs" / "http.md").read_text()
    assert markdown_table() in page, "run: python -m serving.settings, paste into docs/http.md"


def test_the_torchserve_template_takes_the_declared_limits(tmp_path: Path) -> None:
    text = (ROOT / "serving" / "templates" / "model-config.yaml").read_text()
    names = [f.name for f in dataclasses.fields(defaults().limits)]
    for name in names:
        assert f"{name}: {{{name}}}" in text
    assert limits({"max_instances": "9"}) == defaults(max_instances=9).limits


def test_reloads_read_the_models_folder_and_the_updates_dir_unless_told(tmp_path: Path) -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser()
    add_flags(parser)
    (tmp_path / "model.yaml").write_text("")
    for model in (tmp_path / "model.yaml", tmp_path):
        args = parser.parse_args(["--model", str(model), "--updates-dir", "/srv/updates"])
        assert from_args(args).reload_roots == os.pathsep.join([str(tmp_path), "/srv/updates"])
    args = parser.parse_args(["--reload-roots", "/srv/weights"])
    assert from_args(args).reload_roots == "/srv/weights"
    assert from_args(parser.parse_args([])).reload_roots == ""  # the demo: no reloads
