"""Sequence test models, built in code with onnx.helper (as runtime/examples/graph.py does).

The accumulator: OUTPUT = STATE_IN + INPUT, and STATE_OUT = OUTPUT, so with implicit state each
response is the running sum of its sequence's inputs. It also echoes what the sequence batcher fed
it (START_OUT, END_OUT, READY_OUT as FP32, CORRID_OUT as given), so tests see every control.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from runtime.examples import save_model
from runtime.examples.graph import model, tensor

FLAG_TYPES = {"INT32": TensorProto.INT32, "FP32": TensorProto.FLOAT, "BOOL": TensorProto.BOOL}
FLAG_LISTS = {"INT32": "int32_false_true: [0, 1]", "FP32": "fp32_false_true: [0, 1]", "BOOL": "bool_false_true: [false, true]"}
ACCUMULATOR_OUTPUTS = ("OUTPUT", "START_OUT", "END_OUT", "READY_OUT", "CORRID_OUT")


def build_accumulator(flag_type: str = "INT32", corrid_type: int = TensorProto.UINT64, batched: bool = True) -> onnx.ModelProto:
    flag = FLAG_TYPES[flag_type]
    lead: list[int | str] = ["batch"] if batched else []
    nodes = [
        helper.make_node("Add", ["STATE_IN", "INPUT"], ["sum"], name="accumulate"),
        helper.make_node("Identity", ["sum"], ["OUTPUT"], name="output"),
        helper.make_node("Identity", ["sum"], ["STATE_OUT"], name="state"),
        helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"], name="corrid"),
    ]
    for name in ("START", "END", "READY"):
        nodes.append(helper.make_node("Cast", [name], [f"{name}_OUT"], name=f"{name.lower()}_out", to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes=nodes,
        name="accumulator",
        inputs=[
            tensor("INPUT", TensorProto.FLOAT, [*lead, 1]),
            tensor("STATE_IN", TensorProto.FLOAT, [*lead, 1]),
            *(tensor(name, flag, [*lead, 1]) for name in ("START", "END", "READY")),
            tensor("CORRID", corrid_type, [*lead, 1]),
        ],
        outputs=[
            tensor("OUTPUT", TensorProto.FLOAT, [*lead, 1]),
            tensor("STATE_OUT", TensorProto.FLOAT, [*lead, 1]),
            *(tensor(f"{name}_OUT", TensorProto.FLOAT, [*lead, 1]) for name in ("START", "END", "READY")),
            tensor("CORRID_OUT", corrid_type, [*lead, 1]),
        ],
    )
    return model(graph)


def accumulator_config(
    strategy: str = "oldest",
    flag_type: str = "INT32",
    corrid: str = "TYPE_UINT64",
    idle_us: int = 5_000_000,
    max_batch_size: int = 8,
    strategy_block: str = "",
    initial_state: str = "zero_data: true",
    instances: int = 1,
) -> str:
    """The accumulator's config.pbtxt: `strategy` "oldest" or "direct", its block's fields in `strategy_block`."""
    flags = FLAG_LISTS[flag_type]
    controls = ",\n".join(
        f'    {{ name: "{name}" control [ {{ kind: CONTROL_SEQUENCE_{name} {flags} }} ] }}' for name in ("START", "END", "READY")
    )
    return f"""max_batch_size: {max_batch_size}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  {strategy} {{ {strategy_block} }}
  control_input [
{controls},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
  ]
  state [ {{
    input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ]
    initial_state {{ data_type: TYPE_FP32 dims: [ 1 ] {initial_state} name: "initial" }}
  }} ]
}}
"""


def save_accumulator(repo: Path, name: str, version: int = 1, **config: object) -> Path:
    flag_type = str(config.get("flag_type", "INT32"))
    corrid = str(config.get("corrid", "TYPE_UINT64"))
    corrid_type = {"TYPE_UINT64": TensorProto.UINT64, "TYPE_INT32": TensorProto.INT32, "TYPE_STRING": TensorProto.STRING,
                   "TYPE_INT64": TensorProto.INT64, "TYPE_UINT32": TensorProto.UINT32}[corrid]
    batched = int(str(config.get("max_batch_size", 8))) > 0
    return save_model(
        build_accumulator(flag_type, corrid_type, batched), repo, name, version,
        config_pbtxt=accumulator_config(**config),  # type: ignore[arg-type]
    )
