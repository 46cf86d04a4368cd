"""KServe V2 protobuf <-> the core's types: `ModelInferRequest` -> `InferRequest`, `InferResponse` -> protobuf.

Requests arrive as bytes and are parsed here, so a malformed message is INVALID_ARGUMENT, not INTERNAL.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import DecodeError, Message

from runtime.errors import InvalidInput, quoted
from runtime._pb import grpc_service_pb2 as pb
from runtime.shm import PARAMETERS as SHM_PARAMETERS
from runtime.shm import parse_reference
from runtime.shm.reference import shared_memory_parameters
from runtime.tensors import array_from_raw, check_shape, element_count, numpy_dtype, raw_from_array
from runtime.types import (
    Array,
    InferRequest,
    InferResponse,
    RequestedOutput,
    SharedInput,
    SharedMemoryRef,
    TensorSpec,
    datatype_of,
)
from runtime.validate import classification_count

# InferTensorContents field for each datatype (narrow types travel in their family's 32-bit field).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
ALL_CONTENTS_FIELDS = tuple(sorted(set(CONTENTS_FIELD.values())))



def parse(message_type: type[Message], raw: bytes) -> Any:
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput(f"malformed {message_type.DESCRIPTOR.name} protobuf: {exc}") from None



# ---- decoding -----------------------------------------------------------------------------------


def _param_value(param: pb.InferParameter) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def _shared_memory(tensor: str, parameters: Any) -> SharedMemoryRef | None:
    """A tensor's shared-memory reference (Triton's extension), or None: its parameters parsed as HTTP's are."""
    present = {key: _param_value(parameters[key]) for key in SHM_PARAMETERS if key in parameters}
    return parse_reference(present, tensor) if present else None


def decode_infer_request(request: pb.ModelInferRequest, deadline: float | None) -> InferRequest:
    raw_contents = request.raw_input_contents
    # tritonclient sends raw_input_contents for the inputs not in shared memory only, in order.
    memories = [_shared_memory(f"input {quoted(tensor.name)}", tensor.parameters) for tensor in request.inputs]
    inline_count = memories.count(None)
    if raw_contents and len(raw_contents) != inline_count:
        shared_note = f" ({len(memories) - inline_count} more in shared memory)" if inline_count != len(memories) else ""
        raise InvalidInput(
            f"raw_input_contents has {len(raw_contents)} entries for {inline_count} inputs{shared_note}; "
            "give one per input not in shared memory, or none"
        )
    inputs: dict[str, Array] = {}
    shared: dict[str, SharedInput] = {}
    index = 0
    for tensor, memory in zip(request.inputs, memories):
        name = tensor.name
        if name in inputs or name in shared:
            raise InvalidInput(f"input {quoted(name)} appears twice")
        if memory is not None:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input {quoted(name)} has both contents and shared_memory_region {quoted(memory.region)}; "
                    "send one of them"
                )
            shared[name] = SharedInput(tensor.datatype, check_shape(tensor.shape, name), memory)
        elif raw_contents:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {quoted(name)} has both contents and raw_input_contents; send one of them")
            inputs[name] = array_from_raw(raw_contents[index], tensor.datatype, tensor.shape, name)
            index += 1
        else:
            inputs[name] = _array_from_contents(tensor, name)
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for output in request.outputs:
        if output.name in seen:
            raise InvalidInput(f"output {quoted(output.name)} is requested twice")
        seen.add(output.name)
        classification = (
            classification_count(_param_value(output.parameters["classification"]), output.name)
            if "classification" in output.parameters
            else 0
        )
        memory = _shared_memory(f"output {quoted(output.name)}", output.parameters)
        requested.append(RequestedOutput(output.name, classification=classification, shared_memory=memory))
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        inputs=inputs,
        requested_outputs=requested or None,
        id=request.id,
        parameters={key: _param_value(value) for key, value in request.parameters.items()},
        deadline=deadline,
        protocol="grpc",
        shared_inputs=shared or None,
    )



def _array_from_contents(tensor: pb.ModelInferRequest.InferInputTensor, name: str) -> Array:
    shape = check_shape(tensor.shape, name)
    dtype = numpy_dtype(tensor.datatype, name)
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInput(
            f"input {quoted(name)}: datatype {tensor.datatype} can only be sent as raw_input_contents"
        )
    given = [other for other in ALL_CONTENTS_FIELDS if len(getattr(tensor.contents, other))]
    if len(given) > 1:
        raise InvalidInput(
            f"input {quoted(name)}: contents has values in {len(given)} fields ({', '.join(given)}); "
            f"a {tensor.datatype} tensor sends them in contents.{field} only"
        )
    if given and given[0] != field:
        raise InvalidInput(
            f"input {quoted(name)}: values sent in contents.{given[0]}, but a {tensor.datatype} tensor "
            f"sends them in contents.{field}"
        )
    values = getattr(tensor.contents, field)
    count = element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"input {quoted(name)}: {len(values)} values in contents.{field}, but shape {list(shape)} needs {count}"
        )
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    source = np.asarray(values)
    if dtype.kind in "iu" and source.size:
        info = np.iinfo(dtype)
        if source.min() < info.min or source.max() > info.max:
            raise InvalidInput(
                f"input {quoted(name)}: a value in contents.{field} is out of range for {tensor.datatype}"
            )
    return source.astype(dtype, copy=False).reshape(shape)


# ---- encoding -----------------------------------------------------------------------------------


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    wanted = response.requested_outputs
    if wanted is not None and any(out.shared_memory is not None for out in wanted.values()):
        _encode_with_shared_memory(message, response.outputs, wanted)
        return message
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        message.raw_output_contents.append(raw_from_array(array))
    return message


def _encode_with_shared_memory(
    message: pb.ModelInferResponse, outputs: dict[str, Array], wanted: dict[str, RequestedOutput]
) -> None:
    """Outputs the engine wrote into shared memory carry their parameters and no data. The clients read
    raw_output_contents by the output's position (perf_analyzer's crashes on a short list), so each
    shared output holds an empty entry, as Triton's does."""
    places = {name: out.shared_memory for name, out in wanted.items()}
    for name, array in outputs.items():
        output = message.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        memory = places.get(name)
        if memory is None:
            message.raw_output_contents.append(raw_from_array(array))
            continue
        for key, value in shared_memory_parameters(memory).items():
            if isinstance(value, str):
                output.parameters[key].string_param = value
            else:
                output.parameters[key].int64_param = value
        message.raw_output_contents.append(b"")


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)



def stream_error(request: pb.ModelInferRequest | None, message: str) -> pb.ModelStreamInferResponse:
    """An error reply in a stream, carrying the request's id (and model) so the client can match it."""
    if request is None:  # not even parseable: nothing to echo
        return pb.ModelStreamInferResponse(error_message=message)
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


