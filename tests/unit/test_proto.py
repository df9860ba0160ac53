"""The checked-in gRPC stubs are what `make proto` makes of grpc_service.proto today, and they
load beside tritonclient's copy of the same protocol (a private descriptor pool)."""

from __future__ import annotations

from pathlib import Path

from serving.fronts.proto import generate


def test_the_checked_in_stubs_are_regenerated_from_the_proto(tmp_path: Path) -> None:
    for path in generate.generate(tmp_path):
        checked_in = generate.HERE / path.name
        assert checked_in.read_text() == path.read_text(), f"run `make proto`: {path.name}"


def test_our_messages_and_tritonclients_load_in_one_process_and_speak_the_same_wire() -> None:
    from tritonclient.grpc import service_pb2 as theirs

    from serving.fronts.proto import grpc_service_pb2 as ours

    request = ours.ModelInferRequest(model_name="m", model_version="1", id="7")
    request.inputs.add(name="item_id", datatype="INT64", shape=[2])
    request.raw_input_contents.append(b"\x01" * 16)
    request.outputs.add(name="item_id").parameters["binary_data"].bool_param = True
    again = theirs.ModelInferRequest.FromString(request.SerializeToString())
    assert (again.model_name, again.inputs[0].name, list(again.inputs[0].shape)) == (
        "m",
        "item_id",
        [2],
    )
    assert again.outputs[0].parameters["binary_data"].bool_param
    assert again.SerializeToString() == request.SerializeToString()
