"""A model version's processing spec bound to its config: the Processing the ServedModel runs.

Pre-processing: every model input is either filled by steps (one image step, or numeric / categorical
steps side by side along the last axis) or passed through from the public input of the same name.
Post-processing: steps run in order over the model's outputs; the public outputs are the spec's `outputs`
list, or by default every tensor (model outputs, then step outputs, in order).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import InvalidInput
from runtime.processing.image import ImageStep
from runtime.processing.postprocess import PostStep, SoftmaxStep, ThresholdStep, TopKStep
from runtime.processing.spec import (
    CategoricalSpec,
    ImageSpec,
    NumericSpec,
    ProcessingSpec,
    SoftmaxSpec,
    SpecError,
    ThresholdSpec,
    TopKSpec,
)
from runtime.processing.tabular import CategoricalStep, NumericStep
from runtime.spec import VersionSpec, public_inputs, public_outputs
from runtime.types import DATATYPE_TO_NUMPY, Array, TensorSpec

PreStep = ImageStep | NumericStep | CategoricalStep


@dataclass(slots=True)
class _Target:
    """One model input and how it is made."""

    spec: TensorSpec
    steps: list[PreStep] = field(default_factory=list)
    feature_shape: tuple[int, ...] = ()  # the shape after the rows dim, for inputs filled by steps
    blocks: list[tuple[int, int]] = field(default_factory=list)  # tabular: (start, stop) column per step
    zeroed: bool = False


class Pipeline:
    """Processing built from a ProcessingSpec and the model's (completed) config."""

    def __init__(self, spec: ProcessingSpec, config: VersionSpec, config_labels: dict[str, tuple[str, ...]]) -> None:
        self.spec = spec
        self._targets = self._bind_pre(spec, public_inputs(config))
        self._public_inputs = self._collect_public_inputs()
        self._model_labels: dict[str, tuple[str, ...]] = {}
        self._post, self._public_outputs, self._labels = self._bind_post(spec, public_outputs(config), config_labels)
        self._prediction = self._prediction_output()

    # ---- Processing -------------------------------------------------------------------------------

    @property
    def public_inputs(self) -> list[TensorSpec]:
        return list(self._public_inputs)

    @property
    def public_outputs(self) -> list[TensorSpec]:
        return list(self._public_outputs)

    def preprocess(self, label: str, inputs: dict[str, Array]) -> dict[str, Array]:
        result: dict[str, Array] = {}
        rows: int | None = None
        rows_from = ""
        for target in self._targets:
            name = target.spec.name
            if not target.steps:
                if name in inputs:
                    result[name] = inputs[name]
                continue
            for step in target.steps:
                count = inputs[step.input].shape[0]
                if rows is not None and count != rows:
                    raise InvalidInput(
                        f"{label}: inputs disagree on the row count ({rows} in {rows_from!r}, {count} in {step.input!r})"
                    )
                rows, rows_from = count, step.input
            assert rows is not None
            dtype = DATATYPE_TO_NUMPY[target.spec.datatype]
            shape = (rows, *target.feature_shape)
            buffer = np.zeros(shape, dtype=dtype) if target.zeroed else np.empty(shape, dtype=dtype)
            if isinstance(target.steps[0], ImageStep):
                target.steps[0].run(label, inputs[target.steps[0].input], buffer)
            else:
                for step, (start, stop) in zip(target.steps, target.blocks):
                    step.run(label, inputs[step.input], buffer[:, start:stop])
            result[name] = buffer
        return result

    def postprocess(self, label: str, outputs: dict[str, Array]) -> dict[str, Array]:
        tensors = dict(outputs)
        for step in self._post:
            step.run(tensors)
        return {spec.name: tensors[spec.name] for spec in self._public_outputs}

    # ---- extras the engine and monitoring use ---------------------------------------------------

    def output_labels(self, name: str) -> tuple[str, ...] | None:
        """Labels of a public output's classes, for the classification extension."""
        return self._labels.get(name)

    def model_output_labels(self) -> dict[str, tuple[str, ...]]:
        """Class labels of the model's own outputs (before post-processing) that a top-k or threshold step
        labels, directly or through a softmax: what prediction-distribution metrics, which watch the model's
        outputs, can name classes by."""
        return dict(self._model_labels)

    @property
    def prediction_output(self) -> str | None:
        """The public output holding each row's predicted label (top-1 of a top-k, or a threshold's label)."""
        return self._prediction

    def predicted_labels(self, outputs: dict[str, Array]) -> list[str] | None:
        """Each row's predicted label from one request's public outputs; None when the spec predicts none."""
        if self._prediction is None or self._prediction not in outputs:
            return None
        array = outputs[self._prediction]
        first = array.reshape(array.shape[0], -1)[:, 0] if array.ndim else array.reshape(1)
        return [item.decode("utf-8", "replace") for item in first.tolist()]

    # ---- binding ----------------------------------------------------------------------------------

    @staticmethod
    def _bind_pre(spec: ProcessingSpec, model_inputs: Sequence[TensorSpec]) -> list[_Target]:
        by_name = {t.name: _Target(t) for t in model_inputs}
        for step_spec in spec.preprocess:
            target = by_name.get(step_spec.model_input)
            if target is None:
                raise SpecError(
                    f"{step_spec.where}: field 'model_input': {step_spec.model_input!r} is not an input of the model "
                    f"(inputs: {', '.join(by_name)})"
                )
            step: PreStep
            if isinstance(step_spec, ImageSpec):
                if target.steps:
                    raise SpecError(
                        f"{step_spec.where}: field 'model_input': {target.spec.name!r} is already filled by another step; "
                        "an image step fills a model input alone"
                    )
                step = ImageStep(step_spec, target.spec)
                target.feature_shape = step.model_shape()
            else:
                if target.steps and isinstance(target.steps[0], ImageStep):
                    raise SpecError(
                        f"{step_spec.where}: field 'model_input': {target.spec.name!r} is already filled by an image step"
                    )
                if len(target.spec.shape) != 2:
                    raise SpecError(
                        f"{step_spec.where}: field 'model_input': {target.spec.name!r} has shape "
                        f"{list(target.spec.shape)}; tabular steps fill [rows, columns]"
                    )
                if isinstance(step_spec, NumericSpec):
                    step = NumericStep(step_spec, target.spec)
                else:
                    assert isinstance(step_spec, CategoricalSpec)
                    step = CategoricalStep(step_spec, target.spec)
                    target.zeroed = True
                start = target.blocks[-1][1] if target.blocks else 0
                target.blocks.append((start, start + step.width))
            target.steps.append(step)
        targets = list(by_name.values())
        for target in targets:
            if target.blocks:
                width = target.blocks[-1][1]
                declared = target.spec.shape[-1]
                if declared not in (-1, width):
                    parts = ", ".join(
                        f"{s.input!r} {stop - start}" for s, (start, stop) in zip(target.steps, target.blocks)
                    )
                    last = target.steps[-1].spec.where
                    raise SpecError(
                        f"{last}: field 'columns': the steps filling {target.spec.name!r} make {width} columns "
                        f"({parts}), but the model input has {declared}"
                    )
                target.feature_shape = (width,)
        return targets

    def _collect_public_inputs(self) -> list[TensorSpec]:
        public: list[TensorSpec] = []
        users: dict[str, str | None] = {}  # public input name -> the step using it (None: passed through)
        for target in self._targets:
            entries = [(target.spec, None)] if not target.steps else [(s.public, s.spec.where) for s in target.steps]
            for spec, user in entries:
                if spec.name in users:
                    earlier = users[spec.name]
                    step, other = (user, earlier) if user is not None else (earlier, None)
                    what = f"the input of {other}" if other is not None else "an input of the model passed through as is"
                    raise SpecError(f"{step}: field 'input': {spec.name!r} is also {what}")
                users[spec.name] = user
                public.append(spec)
        return public

    def _bind_post(
        self,
        spec: ProcessingSpec,
        model_outputs: Sequence[TensorSpec],
        config_labels: dict[str, tuple[str, ...]],
    ) -> tuple[list[PostStep], list[TensorSpec], dict[str, tuple[str, ...]]]:
        tensors = {t.name: t for t in model_outputs}
        labels = {name: value for name, value in config_labels.items() if name in tensors}
        # tensor -> the model output it ranks like (softmax keeps the order of classes), for model_output_labels
        origin = {t.name: t.name for t in model_outputs}
        steps: list[PostStep] = []
        for step_spec in spec.postprocess:
            step_labels: tuple[str, ...] | None = None
            if isinstance(step_spec, SoftmaxSpec):
                steps.append(SoftmaxStep(step_spec, tensors))
                if step_spec.input in labels:
                    labels[step_spec.output] = labels[step_spec.input]
                if step_spec.input in origin:
                    origin[step_spec.output] = origin[step_spec.input]
                else:
                    origin.pop(step_spec.output, None)
            elif isinstance(step_spec, TopKSpec):
                steps.append(TopKStep(step_spec, tensors))
                step_labels = step_spec.labels
            else:
                assert isinstance(step_spec, ThresholdSpec)
                steps.append(ThresholdStep(step_spec, tensors))
                if tensors[step_spec.input].shape[-1] == 2:
                    step_labels = step_spec.labels
            if step_labels is not None:
                labels.setdefault(step_spec.input, step_labels)
                if step_spec.input in origin:
                    self._model_labels.setdefault(origin[step_spec.input], step_labels)
        if spec.outputs is None:
            public = list(tensors.values())
        else:
            unknown = [name for name in spec.outputs if name not in tensors]
            if unknown:
                raise SpecError(
                    f"the spec: field 'outputs': {unknown[0]!r} is neither a model output nor a step output "
                    f"(known: {', '.join(tensors)})"
                )
            public = [tensors[name] for name in spec.outputs]
        names = {t.name for t in public}
        return steps, public, {name: value for name, value in labels.items() if name in names}

    def _prediction_output(self) -> str | None:
        names = {t.name for t in self._public_outputs}
        for step in self._post:
            if isinstance(step, (TopKStep, ThresholdStep)) and step.label_output and step.label_output in names:
                return step.label_output
        return None
