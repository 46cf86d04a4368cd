"""KServe V2 protobuf <-> the core's types: `ModelInferRequest` -> `InferRequest`, `InferResponse` -> protobuf.

Requests arrive as bytes and are parsed here, so a malformed message is INVALID_ARGUMENT, not INTERNAL.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.message import DecodeError, Message

from runtime.errors import InvalidInput, quoted
from runtime._pb import grpc_service_pb2 as pb
from runtime.tensors import array_from_raw, check_shape, element_count, numpy_dtype, raw_from_array
from runtime.types import Array, InferRequest, InferResponse, RequestedOutput, TensorSpec, datatype_of
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

# Parameters that ask for Triton's shared-memory extension, which this server does not offer yet:
# refused, never silently answered inline.
SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


def parse(message_type: type[Message], raw: bytes) -> Any:
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput(f"malformed {message_type.DESCRIPTOR.name} protobuf: {exc}") from None



# ---- decoding -----------------------------------------------------------------------------------


def _param_value(param: pb.InferParameter) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return getattr(param, choice) if choice else None


def _refuse_shared_memory(kind: str, name: str, parameters: Any) -> None:
    for key in SHARED_MEMORY_PARAMETERS:
        if key in parameters:
            raise InvalidInput(
                f"{kind} {quoted(name)}: parameter {key!r} asks for shared memory, which is not supported yet; "
                "send the data in the request (raw_input_contents or contents) and read outputs from the response"
            )


def decode_infer_request(request: pb.ModelInferRequest, deadline: float | None) -> InferRequest:
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw_contents)} entries for {len(request.inputs)} inputs; "
            "give one per input, or none"
        )
    inputs: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {quoted(name)} appears twice")
        _refuse_shared_memory("input", name, tensor.parameters)
        if raw_contents:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {quoted(name)} has both contents and raw_input_contents; send one of them")
            inputs[name] = array_from_raw(raw_contents[index], tensor.datatype, tensor.shape, name)
        else:
            inputs[name] = _array_from_contents(tensor, name)
    requested: list[RequestedOutput] = []
    seen: set[str] = set()
    for output in request.outputs:
        if output.name in seen:
            raise InvalidInput(f"output {quoted(output.name)} is requested twice")
        seen.add(output.name)
        _refuse_shared_memory("output", output.name, output.parameters)
        classification = (
            classification_count(_param_value(output.parameters["classification"]), output.name)
            if "classification" in output.parameters
            else 0
        )
        requested.append(RequestedOutput(output.name, classification=classification))
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        inputs=inputs,
        requested_outputs=requested or None,
        id=request.id,
        parameters={key: _param_value(value) for key, value in request.parameters.items()},
        deadline=deadline,
        protocol="grpc",
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
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        message.raw_output_contents.append(raw_from_array(array))
    return message


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


