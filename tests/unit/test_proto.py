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


def test_every_message_and_method_matches_tritons_field_for_field() -> None:
    """Our proto is Triton's cut to what is served: every message, field (number, type,
    cardinality, message or enum type) and RPC we define is Triton's, so tritonclient's stubs
    and perf_analyzer read and write ours."""
    from google.protobuf.descriptor import Descriptor, FieldDescriptor
    from tritonclient.grpc import service_pb2 as theirs

    from serving.fronts.proto import grpc_service_pb2 as ours

    pool = theirs.DESCRIPTOR.pool

    def compare(mine: Descriptor) -> int:
        other = pool.FindMessageTypeByName(mine.full_name)
        checked = 0
        for f in mine.fields:
            o: FieldDescriptor = other.fields_by_name[f.name]
            assert (f.number, f.type, f.is_repeated) == (o.number, o.type, o.is_repeated), f
            if f.message_type is not None:
                assert f.message_type.full_name == o.message_type.full_name, f
            if f.enum_type is not None:
                assert f.enum_type.full_name == o.enum_type.full_name, f
                mine_values = {v.name: v.number for v in f.enum_type.values}
                assert mine_values.items() <= {v.name: v.number for v in o.enum_type.values}.items()
            checked += 1
        for nested in mine.nested_types:
            checked += compare(nested)
        return checked

    fields = sum(compare(m) for m in ours.DESCRIPTOR.message_types_by_name.values())
    assert fields > 100
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    other_service = theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        o = other_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            o.input_type.full_name,
            o.output_type.full_name,
        )
    served = {m.name for m in service.methods}
    assert {"ModelConfig", "ModelStatistics", "RepositoryIndex", "SystemSharedMemoryRegister"} <= (
        served
    )
