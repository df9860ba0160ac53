"""Flags, then SEQSERVE_* environment, then defaults."""

from __future__ import annotations

import argparse

import pytest

from serving.settings import add_flags, from_args


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(argv)


def test_defaults_bind_loopback() -> None:
    s = from_args(parse())
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.batch.max_batch_size == 64 and s.batch.max_delay_s == 0.005
    assert s.batch.max_gap_s == 0.002


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("SEQSERVE_PORT", "9000")
    s = from_args(parse("--port", "9100", "--max-delay-ms", "7", "--max-gap-ms", "3"))
    assert s.batch.max_batch_size == 7 and s.port == 9100 and s.batch.max_delay_s == 0.007
    assert s.batch.max_gap_s == 0.003


def test_a_bad_dispatch_is_refused() -> None:
    with pytest.raises(ValueError, match="--dispatch must be split or one"):
        from_args(parse("--dispatch", "all"))


def test_the_engine_flag_overrides_the_spec_or_is_refused() -> None:
    assert from_args(parse()).engine == ""  # the spec's sharding.engine decides
    assert from_args(parse("--engine", "distributed")).engine == "distributed"
    with pytest.raises(ValueError, match="--engine must be local or distributed"):
        from_args(parse("--engine", "dmp"))
