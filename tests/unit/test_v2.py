"""The v2 tensors -> sequences rules (docs/protocols.md), without a server."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import InvalidInput, PayloadTooLarge, SeqServeError
from serving.fronts import v2_body
from serving.fronts.shm import SharedMemory
from serving.fronts.v2 import Tensor, inference, rows, selected
from serving.settings import defaults

ROWS = {"a": 10, "b": 5}
LIMITS = defaults(max_ids_per_request=8, max_instances=3).limits


def t(name: str, data: object, datatype: str = "INT64", shape: list[int] | None = None) -> Tensor:
    n = len(data) // (8 if datatype == "INT64" else 4) if isinstance(data, bytes) else None
    if shape is None:
        shape = [n if n is not None else len(data)]  # type: ignore[arg-type]
    return Tensor(name, datatype, shape, data, "inputs[0]")


def test_one_sequence_from_json_bytes_or_arrays() -> None:
    raw = np.array([1, 9], dtype="<i4").tobytes()
    got = inference([t("a", raw, "INT32"), t("b", np.array([4]))], ROWS, LIMITS)
    assert got.features == ["a", "b"] and len(got.sequences) == 1
    assert got.sequences[0]["a"].dtype == np.int64 and got.sequences[0]["a"].tolist() == [1, 9]
    assert inference([t("b", [0, 4])], ROWS, LIMITS).sequences[0]["b"].tolist() == [0, 4]


def test_lengths_cut_every_feature_into_the_same_sequences() -> None:
    got = inference(
        [t("a", [1, 2, 3]), t("a.lengths", [2, 0, 1]), t("b", [4]), t("b.lengths", [0, 1, 0])],
        ROWS,
        LIMITS,
    )
    assert [{k: v.tolist() for k, v in s.items()} for s in got.sequences] == [
        {"a": [1, 2], "b": []},
        {"a": [], "b": [4]},
        {"a": [3], "b": []},
    ]
    answers = [{"a": np.full((len(s["a"]), 2), i, np.float32)} for i, s in enumerate(got.sequences)]
    assert rows(answers, "a")[:, 0].tolist() == [0, 0, 2]


@pytest.mark.parametrize(
    "tensors,words",
    [
        ([], "at least one input"),
        ([t("c", [1])], "unknown input 'c'"),
        ([t("a", [1]), t("a", [2])], "given twice"),
        ([t("a", [1.0], "FP32")], "datatype 'FP32'"),
        ([t("a", [1, 2], shape=[1, 2])], "shape [1, 2]"),
        ([t("a", [1, 2], shape=[3])], "2 values of data for shape [3]"),
        ([t("a", b"\x00" * 12)], "12 bytes of data"),
        ([t("a", [1, True])], "[1]: expected an integer, got bool"),
        ([t("a", [2**64])], "is not an INT64"),
        ([t("a", [2**40], "INT32")], "is not an INT32"),
        ([t("a", [10])], "'a'[0]: id 10 is outside [0, 10)"),
        ([t("a", [1]), t("a.lengths", [2])], "lengths sum to 2"),
        ([t("a", [1]), t("a.lengths", [-1, 2])], "a length is negative"),
        ([t("a.lengths", [1])], "there is no input 'a' to cut"),
        ([t("a", [1]), t("a.lengths", [1]), t("b", [1])], "'b' has no 'b.lengths'"),
        ([t("a", []), t("a.lengths", [])], "at least one sequence"),
    ],
)
def test_bad_inputs_name_the_input_and_position(tensors: list[Tensor], words: str) -> None:
    with pytest.raises(InvalidInput) as e:
        inference(tensors, ROWS, LIMITS)
    assert words in str(e.value)


def test_limits() -> None:
    with pytest.raises(PayloadTooLarge, match="9 ids; the limit is 8"):
        inference([t("a", list(range(9)))], ROWS, LIMITS)
    with pytest.raises(PayloadTooLarge, match="4 sequences; the limit is 3"):
        inference([t("a", [1, 2, 3, 4]), t("a.lengths", [1, 1, 1, 1])], ROWS, LIMITS)


def test_outputs_are_selected_among_the_features_named() -> None:
    assert selected([], ["a", "b"]) == ["a", "b"]
    assert selected([("b", "outputs[0]")], ["a", "b"]) == ["b"]
    with pytest.raises(InvalidInput, match="outputs\\[0\\]: 'c' is not an output"):
        selected([("c", "outputs[0]")], ["a"])
    with pytest.raises(InvalidInput, match="requested twice"):
        selected([("a", "outputs[0]"), ("a", "outputs[1]")], ["a"])


# -- the REST infer body: the typed decoder and the checks behind it answer alike -------------

VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-3, 40)
    | st.floats(allow_nan=False)
    | st.text(max_size=3)
)
PARAMS = st.dictionaries(
    st.sampled_from(
        [
            "binary_data_size",
            "binary_data",
            "binary_data_output",
            "shared_memory_region",
            "shared_memory_byte_size",
            "other",
        ]
    ),
    VALUES,
)
INPUT = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b", "a.lengths"]) | VALUES},
    optional={
        "shape": st.lists(st.integers(-1, 4) | VALUES, max_size=2),
        "data": st.lists(st.integers(-1, 12), max_size=4) | VALUES,
        "parameters": PARAMS | VALUES,
        "datatype": st.sampled_from(["INT64", "INT32", "FP32"]) | VALUES,
    },
)
OUTPUT = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b"]) | VALUES}, optional={"parameters": PARAMS | VALUES}
)
HEADER = st.fixed_dictionaries(
    {"inputs": st.lists(INPUT, max_size=3) | VALUES},
    optional={
        "outputs": st.lists(OUTPUT, max_size=2) | VALUES,
        "parameters": PARAMS | VALUES,
        "id": VALUES,
        "extra": VALUES,
    },
)


def rest_outcome(call: Any) -> Any:
    try:
        d = call()
    except SeqServeError as e:
        return (type(e).__name__, str(e))
    inputs = [(t.name, t.datatype, list(t.shape), t.where, repr(t.data)) for t in d.inputs]
    return (d.id, inputs, d.requested, d.binary_default)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HEADER, st.binary(max_size=24))
def test_the_typed_header_decoder_answers_as_the_checks_would(doc: Any, rest: bytes) -> None:
    head = json.dumps(doc).encode()
    headers = {b"content-type": b"application/octet-stream"}
    if rest:
        headers[v2_body.HEADER_LENGTH] = str(len(head)).encode()
    shm = SharedMemory(False)
    fast = rest_outcome(lambda: v2_body.decode(head + rest, headers, shm))
    slow = rest_outcome(lambda: v2_body._checked_request(head, rest, shm))
    assert fast == slow
