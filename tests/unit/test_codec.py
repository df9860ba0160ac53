"""serving.fronts.codec: HTTP bodies in both media types, every client error, exact float32 JSON."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.config import parse_spec
from serving.errors import InvalidInput, PayloadTooLarge, SeqServeError, UnsupportedMediaType
from serving.fronts import codec
from serving.fronts.asgi import read_body
from serving.fronts.codec import Decoded, decode
from serving.settings import Limits, defaults

SPEC = parse_spec(
    {
        "name": "codec",
        "tables": [
            {"name": "t0", "num_embeddings": 100, "embedding_dim": 8, "features": ["a", "b"]},
            {"name": "t1", "num_embeddings": 10, "embedding_dim": 8, "features": ["c"]},
        ],
        "sharding": {"world_size": 1},
    }
)
LIMITS = defaults().limits
ROWS = {"a": 100, "b": 100, "c": 10}
MSGPACK = "application/msgpack"


def dec_json(doc: Any, limits: Limits = LIMITS) -> Decoded:
    return decode(json.dumps(doc).encode(), "application/json", ROWS, limits)


def bad(doc: Any, content_type: str = "application/json") -> InvalidInput:
    body = msgpack.packb(doc) if content_type == MSGPACK else json.dumps(doc).encode()
    with pytest.raises(InvalidInput) as e:
        decode(body, content_type, ROWS, LIMITS)
    return e.value


def as_lists(d: Decoded) -> list[dict[str, list[int]]]:
    for req in d.sequences:
        assert all(v.dtype == np.int64 and v.ndim == 1 for v in req.values())
    return [{k: v.tolist() for k, v in req.items()} for req in d.sequences]


# -- decode: good bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "application/json; charset=utf-8", "Application/JSON"],
)
def test_json_single_form(content_type: str | None) -> None:
    body = b'{"features": {"a": [3, 17, 17], "c": [9], "b": []}}'
    d = decode(body, content_type, ROWS, LIMITS)
    assert d.instances is False
    assert as_lists(d) == [{"a": [3, 17, 17], "c": [9], "b": []}]


@pytest.mark.parametrize("content_type", [MSGPACK, "application/x-msgpack", "application/json"])
def test_instances_form_in_both_media_types(content_type: str) -> None:
    doc = {"instances": [{"features": {"a": [0, 99]}}, {"features": {}}, {"features": {"c": [5]}}]}
    body = json.dumps(doc).encode() if "json" in content_type else msgpack.packb(doc)
    d = decode(body, content_type, ROWS, LIMITS)
    assert d.instances is True
    assert as_lists(d) == [{"a": [0, 99]}, {}, {"c": [5]}]


def test_msgpack_single_form() -> None:
    d = decode(msgpack.packb({"features": {"b": [1, 2]}}), MSGPACK, ROWS, LIMITS)
    assert not d.instances and as_lists(d) == [{"b": [1, 2]}]


def test_limits_are_inclusive() -> None:
    limits = defaults(max_body_bytes=10_000, max_ids_per_request=6, max_instances=2).limits
    doc = {"instances": [{"features": {"a": [1, 2, 3], "c": [1]}}, {"features": {"b": [4, 5]}}]}
    assert len(dec_json(doc, limits).sequences) == 2


def test_large_request_decodes() -> None:
    ids = list(range(100)) * 163
    d = dec_json({"features": {"a": ids}})
    assert np.array_equal(d.sequences[0]["a"], np.array(ids))


# -- decode: 400 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ids", "pos", "says"),
    [
        ([1, -1], 1, "features.a[1]: id -1 is outside [0, 100)"),
        ([100], 0, "features.a[0]: id 100 is outside [0, 100)"),
        ([5, 6, 7, 2**63], 3, "features.a[3]: id 9223372036854775808 is outside [0, 100)"),
        ([2**64 - 1], 0, "features.a[0]: id 18446744073709551615 is outside [0, 100)"),
        # beyond 64 bits: the id as sent, not the float orjson would read it as
        ([-(2**63) - 1], 0, "features.a[0]: id -9223372036854775809 is outside [0, 100)"),
        ([True], 0, "features.a[0]: expected an integer id in [0, 100), got boolean true"),
        ([1, 2, False], 2, "features.a[2]: expected an integer id in [0, 100), got boolean false"),
        ([1, 1.0], 1, "features.a[1]: expected an integer id in [0, 100), got float 1.0"),
        ([1.5], 0, "got float 1.5"),
        ([0, "3"], 1, "features.a[1]: expected an integer id in [0, 100), got string '3'"),
        ([[1, 2]], 0, "features.a[0]: expected an integer id in [0, 100), got an array"),
        ([{"x": 1}], 0, "got an object"),
        ([None], 0, "got null"),
        ([2**70], 0, "features.a[0]: id 1180591620717411303424 is outside [0, 100)"),
    ],
)
def test_bad_id_names_field_and_position(ids: list[Any], pos: int, says: str) -> None:
    e = bad({"features": {"c": [1], "a": ids}})
    assert says in str(e)
    assert (e.field, e.position) == ("features.a", pos)


@pytest.mark.parametrize(
    ("ids", "says"),
    [([3, 10], "instances[1].features.c[1]: id 10 is outside [0, 10)"), ([True], "boolean")],
)
def test_bad_id_in_instances_is_prefixed(ids: list[Any], says: str) -> None:
    doc = {"instances": [{"features": {"c": [9]}}, {"features": {"a": [99], "c": ids}}]}
    for content_type in ("application/json", MSGPACK):
        e = bad(doc, content_type)
        assert says in str(e)
        assert e.field == "instances[1].features.c"
        assert e.position == len(ids) - 1


def test_msgpack_float_and_binary_ids_are_400() -> None:
    assert "features.a[0]: expected an integer id in [0, 100), got float 2.0" in str(
        bad({"features": {"a": [2.0]}}, MSGPACK)
    )
    assert "got binary data" in str(bad({"features": {"a": [b"\x01"]}}, MSGPACK))


def test_unknown_feature_is_named() -> None:
    e = bad({"features": {"a": [1], "foo": [1]}})
    assert str(e) == "features.foo: unknown feature; known: a, b, c"
    assert e.field == "features.foo"
    e = bad({"instances": [{"features": {}}, {"features": {"zz": []}}]})
    assert str(e).startswith("instances[1].features.zz: unknown feature")
    assert "unknown feature" in str(bad({"features": {b"a": [1]}}, MSGPACK))


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([1, 2], "got an array"),
        (7, "got int 7"),
        ("features", "got string 'features'"),
        (None, "got null"),
        ({}, "got an empty object"),
        ({"features": {}, "instances": []}, "got keys 'features', 'instances'"),
        ({"features": {}, "extra": 1}, "got keys 'features', 'extra'"),
        ({"feature": {}}, "got keys 'feature'"),
    ],
)
def test_body_must_be_an_object_with_exactly_one_known_key(doc: Any, says: str) -> None:
    e = bad(doc)
    assert str(e).startswith("body: expected an object with one key, 'features' or 'instances'")
    assert says in str(e)


@pytest.mark.parametrize(
    ("doc", "says", "field", "position"),
    [
        ({"features": [1, 2]}, "features: expected an object of feature -> ids", "features", None),
        (
            {"features": {"a": 3}},
            "features.a: expected an array of integer ids, got int 3",
            "features.a",
            None,
        ),
        ({"features": {"a": "1,2"}}, "features.a: expected an array", "features.a", None),
        ({"instances": {"features": {}}}, "instances: expected an array", "instances", None),
        ({"instances": []}, "instances: must hold at least one instance", "instances", None),
        ({"instances": [{"features": {}}, 3]}, "instances[1]: expected an object", "instances", 1),
        ({"instances": [{"features": {}, "x": 1}]}, "instances[0]: expected", "instances", 0),
        ({"instances": [{}]}, "instances[0]: expected an object with one key", "instances", 0),
        (
            {"instances": [{"features": 1}]},
            "instances[0].features: expected an object",
            "instances[0].features",
            None,
        ),
    ],
)
def test_wrong_shapes(doc: Any, says: str, field: str, position: int | None) -> None:
    e = bad(doc)
    assert says in str(e)
    assert (e.field, e.position) == (field, position)


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"", "application/json", "body: not valid JSON"),
        (b'{"features": {"a": [1, 2]', "application/json", "body: not valid JSON"),
        (b"\xff\xfe{}", "application/json", "body: not valid JSON"),
        (b'{"features": {"a": [NaN]}}', "application/json", "body: not valid JSON"),
        (b'{"features": {"a": [1e999]}}', "application/json", "body: not valid JSON"),
        (b"", MSGPACK, "body: not valid msgpack"),
        (b"\xc1", MSGPACK, "body: not valid msgpack"),
        (b"\x92\x01", MSGPACK, "body: not valid msgpack"),
        (b"\x81\x01\x02", MSGPACK, "body: not valid msgpack"),  # int map key
        (b"\x81\xa1\xff\x01", MSGPACK, "body: not valid msgpack"),  # str that is not UTF-8
        (msgpack.packb({"a": 1}) + b"\x00", MSGPACK, "body: not valid msgpack"),  # trailing
    ],
)
def test_invalid_bytes_are_400(body: bytes, content_type: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as e:
        decode(body, content_type, ROWS, LIMITS)
    assert e.value.field == "body"


# -- decode: 413 and 415 ----------------------------------------------------------------------


def test_body_over_the_limit_is_413_as_it_is_read() -> None:
    """The body limit is checked once, while the body is read (declared or streamed)."""
    body = json.dumps({"features": {"a": [1] * 100}}).encode()

    def receive_in(chunks: list[bytes]) -> Any:
        messages = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        return receive

    declared = str(len(body)).encode()
    with pytest.raises(
        PayloadTooLarge, match=f"body of {len(body)} bytes is over the limit of 100"
    ):
        asyncio.run(read_body(receive_in([body]), declared, 100))
    with pytest.raises(PayloadTooLarge, match="body is over the limit of 100 bytes"):
        asyncio.run(read_body(receive_in([body[:60], body[60:]]), None, 100))
    assert asyncio.run(read_body(receive_in([body[:60], body[60:]]), None, len(body))) == body


def test_ids_over_the_limit_are_413_summed_over_features_and_instances() -> None:
    limits = defaults(max_ids_per_request=5).limits
    with pytest.raises(PayloadTooLarge, match="6 ids; the limit is 5"):
        dec_json({"features": {"a": [1, 2, 3], "c": [1, 2, 3]}}, limits)
    doc = {"instances": [{"features": {"a": [1, 2, 3]}}, {"features": {"b": [1, 2, 3]}}]}
    with pytest.raises(PayloadTooLarge, match="6 ids"):
        dec_json(doc, limits)
    with pytest.raises(PayloadTooLarge):
        dec_json({"features": {"a": [1] * (LIMITS.max_ids_per_request + 1)}})


def test_instances_over_the_limit_are_413() -> None:
    doc = {"instances": [{"features": {}}] * 3}
    with pytest.raises(PayloadTooLarge, match="3 instances; the limit is 2"):
        dec_json(doc, defaults(max_instances=2).limits)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x", "json"]
)
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as e:
        decode(b'{"features": {}}', content_type, ROWS, LIMITS)
    assert f"'{content_type}' is not supported" in str(e.value)


# -- property: any body gives a Decoded or one of ours, never anything else ---------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=5)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["features", "instances", "a", "b", "c", "x"]), inner)
    ),
    max_leaves=20,
)
GOOD_IDS = st.lists(st.integers(min_value=0, max_value=9), max_size=6)
IDS = GOOD_IDS | st.lists(st.integers(min_value=-5, max_value=120) | SCALARS, max_size=6)
FEATURES = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), IDS | JSONISH, max_size=3)
SHAPED = st.fixed_dictionaries({"features": FEATURES}) | st.fixed_dictionaries(
    {"instances": st.lists(st.fixed_dictionaries({"features": FEATURES}) | JSONISH, max_size=4)}
)


def check_decode(body: bytes, content_type: str) -> None:
    try:
        d = decode(
            body, content_type, ROWS, defaults(max_ids_per_request=20, max_instances=3).limits
        )
    except SeqServeError:
        return
    assert isinstance(d, Decoded) and d.sequences
    for req in d.sequences:
        for f, ids in req.items():
            assert f in ROWS and ids.dtype == np.int64 and ids.ndim == 1
            assert ((ids >= 0) & (ids < ROWS[f])).all()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=64).map(lambda b: ("bytes", b)),
        JSONISH.map(lambda d: ("doc", d)),
        SHAPED.map(lambda d: ("doc", d)),
    ),
    st.sampled_from(["application/json", MSGPACK]),
)
def test_decode_never_fails_with_anything_but_our_errors(
    case: tuple[str, Any], content_type: str
) -> None:
    kind, value = case
    if kind == "bytes":
        body = value
    elif content_type == MSGPACK:
        body = msgpack.packb(value, use_bin_type=True)
    else:
        body = json.dumps(value).encode()  # may hold Infinity: not JSON, must be a clean 400
    check_decode(body, content_type)


def outcome(call: Any) -> Any:
    try:
        d = call()
    except SeqServeError as e:
        return (type(e).__name__, str(e))
    return (d.instances, [{f: v.tolist() for f, v in r.items()} for r in d.sequences])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SHAPED | JSONISH, st.sampled_from(["application/json", MSGPACK]))
def test_the_typed_decoder_answers_as_the_checks_would(doc: Any, content_type: str) -> None:
    """The msgspec fast path and the Python checks behind it give the same requests, or the
    same error, for any body: the fast path changes the cost, never the answer."""
    if content_type == MSGPACK:
        body = msgpack.packb(doc, use_bin_type=True)
    else:
        try:
            body = json.dumps(doc, allow_nan=False).encode()
        except ValueError:
            return
    limits = defaults(max_ids_per_request=20, max_instances=3).limits
    kind = codec._body_kind(content_type)
    fast = outcome(lambda: decode(body, content_type, ROWS, limits))
    slow = outcome(lambda: codec._decode_checked(codec._parse(body, kind), ROWS, limits))
    assert fast == slow  # (ids stay within 64 bits here: beyond, orjson reads a float)
