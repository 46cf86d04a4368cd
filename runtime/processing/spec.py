"""processing.json -> typed step specs, checked field by field; nothing here knows the model's tensors.

Every error is a SpecError whose message names the step ("preprocess[1] (numeric)") and the field
("field 'columns[3].clip'"); pipeline.py checks the steps against the model's config with the same wording,
and load_processing prefixes the file. Files a step names (labels, vocabulary) are read here, relative to
the version directory, and may not leave it.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from runtime.errors import ModelLoadError
from runtime.paths import inside

SPEC_FILENAME = "processing.json"


class SpecError(ValueError):
    """A bad processing spec; the message names the step and field."""


_MISSING: Any = object()


class _Fields:
    """One JSON object of the spec, read field by field; unknown fields are errors."""

    def __init__(self, data: object, where: str, allowed: Sequence[str]) -> None:
        if not isinstance(data, dict):
            raise SpecError(f"{where}: must be a JSON object, got {_kind(data)}")
        unknown = [key for key in data if key not in allowed]
        if unknown:
            raise SpecError(f"{where}: unknown field {unknown[0]!r} (known fields: {', '.join(allowed)})")
        self.data: dict[str, Any] = data
        self.where = where

    def error(self, name: str, problem: str) -> SpecError:
        return SpecError(f"{self.where}: field {name!r}: {problem}")

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        if name not in self.data:
            if default is _MISSING:
                raise SpecError(f"{self.where}: missing field {name!r}")
            return default
        return self.data[name]

    def text(self, name: str, default: Any = _MISSING, choices: Sequence[str] | None = None) -> Any:
        value = self.raw(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, got {_show(value)}")
        if choices is not None and value not in choices:
            raise self.error(name, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value

    def integer(self, name: str, default: Any = _MISSING, minimum: int = 1) -> Any:
        value = self.raw(name, default)
        if value is default and default is not _MISSING:
            return value
        if not _is_int(value) or value < minimum:
            raise self.error(name, f"must be an integer >= {minimum}, got {_show(value)}")
        return int(value)

    def number(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is default and default is not _MISSING:
            return value
        if not _is_number(value) or not math.isfinite(value):
            raise self.error(name, f"must be a finite number, got {_show(value)}")
        return float(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_show(value)}")
        return value

    def numbers(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not value or not all(_is_number(v) and math.isfinite(v) for v in value):
            raise self.error(name, f"must be a non-empty list of finite numbers, got {_show(value)}")
        return tuple(float(v) for v in value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- pre-processing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageSpec:
    where: str
    input: str
    model_input: str
    format: Literal["encoded", "hwc"]
    formats: tuple[str, ...]  # Pillow format names accepted when encoded
    base64: bool  # encoded: also accept base64 text of an encoded image
    convert: bool  # let Pillow convert other colour modes to the model's channels
    max_pixels: int
    resize: tuple[int, int] | None  # (height, width) before the centre crop
    shorter_side: int | None  # resize keeping the aspect ratio so the shorter side is this long
    channel_order: str  # the model's: "RGB", "BGR" (3 channels) or "L" (1)
    input_channel_order: str  # hwc sources: "RGB" or "BGR"
    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    layout: Literal["NCHW", "NHWC"]


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    missing: Literal["keep", "error", "fill"]
    fill: float  # NaN unless missing == "fill"
    clip: tuple[float, float]  # (-inf, inf) when not clipped
    mul: float  # after clipping: value * mul + add (standardize / minmax folded in)
    add: float


@dataclass(frozen=True, slots=True)
class NumericSpec:
    where: str
    input: str
    model_input: str
    datatype: Literal["FP32", "FP64"]
    columns: tuple[ColumnSpec, ...]


@dataclass(frozen=True, slots=True)
class CategoricalSpec:
    where: str
    input: str
    model_input: str
    columns: tuple[str, ...]
    vocabularies: tuple[tuple[str, ...], ...]  # one per column, from the vocabulary file
    encoding: Literal["onehot", "index"]
    unknown: Literal["error", "oov", "zeros"]

    def width(self) -> int:
        """Model-input columns this step fills."""
        if self.encoding == "index":
            return len(self.columns)
        extra = 1 if self.unknown == "oov" else 0
        return sum(len(vocabulary) + extra for vocabulary in self.vocabularies)


PreSpec = ImageSpec | NumericSpec | CategoricalSpec


# ---- post-processing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SoftmaxSpec:
    where: str
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class TopKSpec:
    where: str
    input: str
    k: int
    labels: tuple[str, ...] | None
    scores: str | None  # output names; at least one is set
    indices: str | None
    label_output: str | None


@dataclass(frozen=True, slots=True)
class ThresholdSpec:
    where: str
    input: str
    threshold: float
    labels: tuple[str, str] | None
    index_output: str | None
    label_output: str | None


PostSpec = SoftmaxSpec | TopKSpec | ThresholdSpec


@dataclass(frozen=True, slots=True)
class ProcessingSpec:
    source: str
    preprocess: tuple[PreSpec, ...] = ()
    postprocess: tuple[PostSpec, ...] = ()
    outputs: tuple[str, ...] | None = None  # the public outputs in order; None: every tensor
    files: tuple[str, ...] = field(default=())  # files the spec read, relative to the version directory


# ---- reading ----------------------------------------------------------------------------------


def find_spec(model_dir: Path, version_dir: Path) -> Path | None:
    """The version's processing.json, else the model's, else None."""
    for candidate in (version_dir / SPEC_FILENAME, model_dir / SPEC_FILENAME):
        if candidate.is_file():
            return candidate
    return None


def read_spec(path: Path, version_dir: Path) -> ProcessingSpec:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"not valid JSON: {exc}") from None
    return parse_spec(data, version_dir, str(path))


def parse_spec(data: object, version_dir: Path, source: str = SPEC_FILENAME) -> ProcessingSpec:
    top = _Fields(data, "the spec", ("preprocess", "postprocess", "outputs"))
    reader = _FileReader(version_dir)
    pre_raw = top.raw("preprocess", [])
    post_raw = top.raw("postprocess", [])
    if not isinstance(pre_raw, list):
        raise top.error("preprocess", f"must be a list of steps, got {_show(pre_raw)}")
    if not isinstance(post_raw, list):
        raise top.error("postprocess", f"must be a list of steps, got {_show(post_raw)}")
    pre = tuple(_pre_step(step, f"preprocess[{i}]", reader) for i, step in enumerate(pre_raw))
    post = tuple(_post_step(step, f"postprocess[{i}]", reader) for i, step in enumerate(post_raw))
    outputs: tuple[str, ...] | None = None
    if top.has("outputs"):
        raw = top.raw("outputs")
        if not isinstance(raw, list) or not raw or not all(isinstance(n, str) and n for n in raw):
            raise top.error("outputs", f"must be a non-empty list of tensor names, got {_show(raw)}")
        if len(set(raw)) != len(raw):
            raise top.error("outputs", "names a tensor twice")
        outputs = tuple(raw)
    if not pre and not post and outputs is None:
        raise SpecError("the spec: declares no preprocess or postprocess steps")
    return ProcessingSpec(source, pre, post, outputs, tuple(reader.read))


def _step_type(data: object, where: str, known: Sequence[str]) -> str:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: must be a JSON object, got {_kind(data)}")
    kind = data.get("type")
    if kind not in known:
        raise SpecError(f"{where}: field 'type': must be one of {', '.join(repr(k) for k in known)}, got {_show(kind)}")
    return str(kind)


def _pre_step(data: object, where: str, reader: _FileReader) -> PreSpec:
    kind = _step_type(data, where, ("image", "numeric", "categorical"))
    where = f"{where} ({kind})"
    if kind == "image":
        return _image(data, where)
    if kind == "numeric":
        return _numeric(data, where)
    return _categorical(data, where, reader)


_IMAGE_FIELDS = (
    "type", "input", "model_input", "format", "formats", "base64", "convert", "max_pixels", "resize",
    "channel_order", "input_channel_order", "scale", "mean", "std", "layout",
)


def _image(data: object, where: str) -> ImageSpec:
    f = _Fields(data, where, _IMAGE_FIELDS)
    name = f.text("input")
    image_format = f.text("format", "encoded", ("encoded", "hwc"))
    if image_format == "hwc":
        for encoded_only in ("formats", "base64", "convert", "max_pixels"):
            if f.has(encoded_only):
                raise f.error(encoded_only, "applies to format 'encoded' only")
    elif f.has("input_channel_order"):
        raise f.error("input_channel_order", "applies to format 'hwc' only (decoded images are RGB)")
    formats_raw = f.raw("formats", ["JPEG", "PNG"])
    if not isinstance(formats_raw, list) or not formats_raw or not all(isinstance(x, str) and x for x in formats_raw):
        raise f.error("formats", f"must be a non-empty list of Pillow format names, got {_show(formats_raw)}")
    formats = tuple(x.upper() for x in formats_raw)
    _check_pillow_formats(f, formats)
    resize: tuple[int, int] | None = None
    shorter: int | None = None
    if f.has("resize"):
        raw = f.raw("resize")
        if isinstance(raw, list) and len(raw) == 2 and all(_is_int(v) and v >= 1 for v in raw):
            resize = (int(raw[0]), int(raw[1]))
        elif isinstance(raw, dict) and set(raw) == {"shorter_side"} and _is_int(raw["shorter_side"]) and raw["shorter_side"] >= 1:
            shorter = int(raw["shorter_side"])
        else:
            raise f.error("resize", f'must be [height, width] or {{"shorter_side": N}} with sizes >= 1, got {_show(raw)}')
    mean = f.numbers("mean", None)
    std = f.numbers("std", None)
    if std is not None and any(s == 0 for s in std):
        raise f.error("std", "must not contain 0")
    scale = f.number("scale", 1.0)
    return ImageSpec(
        where=where,
        input=name,
        model_input=f.text("model_input", name),
        format=image_format,
        formats=formats,
        base64=f.flag("base64", False),
        convert=f.flag("convert", False),
        max_pixels=f.integer("max_pixels", 40_000_000),
        resize=resize,
        shorter_side=shorter,
        channel_order=f.text("channel_order", "", ("RGB", "BGR", "L")) if f.has("channel_order") else "",
        input_channel_order=f.text("input_channel_order", "RGB", ("RGB", "BGR")),
        scale=scale,
        mean=mean,
        std=std,
        layout=f.text("layout", "NCHW", ("NCHW", "NHWC")),
    )


def _check_pillow_formats(f: _Fields, formats: tuple[str, ...]) -> None:
    from PIL import Image

    Image.init()
    known = set(Image.OPEN)
    for name in formats:
        if name not in known:
            raise f.error("formats", f"{name!r} is not an image format Pillow can open here")


_COLUMN_FIELDS = ("name", "missing", "fill", "clip", "standardize", "minmax")


def _numeric(data: object, where: str) -> NumericSpec:
    f = _Fields(data, where, ("type", "input", "model_input", "datatype", "defaults", "columns"))
    name = f.text("input")
    defaults: dict[str, Any] = {}
    if f.has("defaults"):
        defaults = f.raw("defaults")
        _Fields(defaults, f"{where}: field 'defaults'", _COLUMN_FIELDS[1:])
    raw_columns = f.raw("columns")
    if _is_int(raw_columns) and raw_columns >= 1:
        raw_columns = [str(i) for i in range(raw_columns)]
    if not isinstance(raw_columns, list) or not raw_columns:
        raise f.error("columns", f"must be a non-empty list of columns or a column count, got {_show(raw_columns)}")
    columns = tuple(_column(raw, defaults, where, i) for i, raw in enumerate(raw_columns))
    names = [c.name for c in columns]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise f.error("columns", f"names column {duplicate!r} twice")
    return NumericSpec(
        where=where,
        input=name,
        model_input=f.text("model_input", name),
        datatype=f.text("datatype", "FP32", ("FP32", "FP64")),
        columns=columns,
    )


def _column(raw: object, defaults: dict[str, Any], where: str, index: int) -> ColumnSpec:
    label = f"columns[{index}]"
    if isinstance(raw, str) and raw:
        raw = {"name": raw}
    f = _Fields(raw, f"{where}: field {label!r}", _COLUMN_FIELDS)
    combined = {**defaults, **f.data}
    # the column's own missing-value policy wins over the defaults' as a whole
    if "fill" in f.data and "missing" not in f.data:
        combined["missing"] = "fill"
    elif "missing" in f.data and "fill" not in f.data:
        combined.pop("fill", None)
    merged = _Fields(combined, f"{where}: field {label!r}", _COLUMN_FIELDS)
    name = merged.text("name")
    missing = merged.text("missing", "fill" if merged.has("fill") else "keep", ("keep", "error", "fill"))
    fill = math.nan
    if missing == "fill":
        fill = merged.number("fill")
    elif merged.has("fill"):
        raise merged.error("fill", f"given, but 'missing' is {missing!r}")
    low, high = -math.inf, math.inf
    if merged.has("clip"):
        clip = merged.raw("clip")
        if (
            not isinstance(clip, list)
            or len(clip) != 2
            or not all(v is None or (_is_number(v) and math.isfinite(v)) for v in clip)
            or clip == [None, None]
        ):
            raise merged.error("clip", f"must be [low, high] (either may be null), got {_show(clip)}")
        low = -math.inf if clip[0] is None else float(clip[0])
        high = math.inf if clip[1] is None else float(clip[1])
        if low > high:
            raise merged.error("clip", f"low {low} is above high {high}")
    if merged.has("standardize") and merged.has("minmax"):
        raise merged.error("minmax", "a column is standardized or min-max scaled, not both")
    mul, add = 1.0, 0.0
    if merged.has("standardize"):
        stats = _Fields(merged.raw("standardize"), f"{merged.where}: field 'standardize'", ("mean", "std"))
        mean, std = stats.number("mean"), stats.number("std")
        if std <= 0:
            raise stats.error("std", f"must be > 0, got {std}")
        mul, add = 1.0 / std, -mean / std
    elif merged.has("minmax"):
        stats = _Fields(merged.raw("minmax"), f"{merged.where}: field 'minmax'", ("min", "max"))
        low_value, high_value = stats.number("min"), stats.number("max")
        if high_value <= low_value:
            raise stats.error("max", f"must be above min ({low_value}), got {high_value}")
        mul, add = 1.0 / (high_value - low_value), -low_value / (high_value - low_value)
    return ColumnSpec(name, missing, fill, (low, high), mul, add)


def _categorical(data: object, where: str, reader: _FileReader) -> CategoricalSpec:
    f = _Fields(data, where, ("type", "input", "model_input", "vocabulary", "columns", "encoding", "unknown"))
    name = f.text("input")
    vocabulary_file = f.text("vocabulary")
    vocabulary = reader.json(vocabulary_file, f, "vocabulary")
    if not isinstance(vocabulary, dict) or not vocabulary:
        raise f.error("vocabulary", f"{vocabulary_file} must hold a JSON object: column name -> list of category strings")
    raw_columns = f.raw("columns", list(vocabulary))
    if not isinstance(raw_columns, list) or not raw_columns or not all(isinstance(c, str) and c for c in raw_columns):
        raise f.error("columns", f"must be a non-empty list of column names, got {_show(raw_columns)}")
    if len(set(raw_columns)) != len(raw_columns):
        raise f.error("columns", "names a column twice")
    vocabularies = []
    for column in raw_columns:
        if column not in vocabulary:
            raise f.error("columns", f"column {column!r} has no entry in {vocabulary_file}")
        words = vocabulary[column]
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise f.error("vocabulary", f"{vocabulary_file}: {column!r} must be a non-empty list of strings")
        if len(set(words)) != len(words):
            repeated = next(w for w in words if words.count(w) > 1)
            raise f.error("vocabulary", f"{vocabulary_file}: {column!r} lists {repeated!r} twice")
        vocabularies.append(tuple(words))
    encoding = f.text("encoding", "onehot", ("onehot", "index"))
    unknown = f.text("unknown", "error", ("error", "oov", "zeros"))
    if unknown == "zeros" and encoding == "index":
        raise f.error("unknown", "'zeros' needs encoding 'onehot'; with 'index' use 'error' or 'oov'")
    return CategoricalSpec(
        where=where,
        input=name,
        model_input=f.text("model_input", name),
        columns=tuple(raw_columns),
        vocabularies=tuple(vocabularies),
        encoding=encoding,
        unknown=unknown,
    )


def _post_step(data: object, where: str, reader: _FileReader) -> PostSpec:
    kind = _step_type(data, where, ("softmax", "topk", "threshold"))
    where = f"{where} ({kind})"
    if kind == "softmax":
        f = _Fields(data, where, ("type", "input", "output"))
        name = f.text("input")
        return SoftmaxSpec(where, name, f.text("output", name))
    if kind == "topk":
        f = _Fields(data, where, ("type", "input", "k", "labels", "outputs"))
        outputs = _Fields(f.raw("outputs"), f"{where}: field 'outputs'", ("scores", "indices", "labels"))
        names = {key: outputs.text(key, None) for key in ("scores", "indices", "labels")}
        if not any(names.values()):
            raise f.error("outputs", "name at least one of 'scores', 'indices', 'labels'")
        labels = _labels(f, reader)
        if names["labels"] and labels is None:
            raise f.error("labels", "needed for the 'labels' output")
        return TopKSpec(where, f.text("input"), f.integer("k"), labels, names["scores"], names["indices"], names["labels"])
    f = _Fields(data, where, ("type", "input", "threshold", "labels", "outputs"))
    outputs = _Fields(f.raw("outputs"), f"{where}: field 'outputs'", ("index", "label"))
    index_name, label_name = outputs.text("index", None), outputs.text("label", None)
    if not index_name and not label_name:
        raise f.error("outputs", "name at least one of 'index', 'label'")
    labels = _labels(f, reader)
    if labels is not None and len(labels) != 2:
        raise f.error("labels", f"a binary classifier needs 2 labels (negative, positive), got {len(labels)}")
    if label_name and labels is None:
        raise f.error("labels", "needed for the 'label' output")
    pair = (labels[0], labels[1]) if labels is not None else None
    return ThresholdSpec(where, f.text("input"), f.number("threshold", 0.5), pair, index_name, label_name)


def _labels(f: _Fields, reader: _FileReader) -> tuple[str, ...] | None:
    if not f.has("labels"):
        return None
    raw = f.raw("labels")
    if isinstance(raw, list):
        if not raw or not all(isinstance(x, str) for x in raw):
            raise f.error("labels", f"must be a label file name or a non-empty list of strings, got {_show(raw)}")
        return tuple(raw)
    if not isinstance(raw, str) or not raw:
        raise f.error("labels", f"must be a label file name or a non-empty list of strings, got {_show(raw)}")
    path = reader.path(raw, f, "labels")
    try:
        labels = read_labels(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise f.error("labels", f"{raw!r}: cannot read it ({type(exc).__name__})") from None
    if not labels:
        raise f.error("labels", f"{raw} holds no labels")
    return labels


def read_labels(path: Path) -> tuple[str, ...]:
    """Triton's label file: one label per line, line i labelling class i."""
    return tuple(path.read_text(encoding="utf-8").splitlines())


class _FileReader:
    """Files a spec names, relative to the version directory, never outside it."""

    def __init__(self, version_dir: Path) -> None:
        self.version_dir = version_dir
        self.read: list[str] = []

    def path(self, name: str, f: _Fields, field_name: str) -> Path:
        try:
            path = inside(self.version_dir, name, f"{f.where}: field {field_name!r}", "version directory")
        except ModelLoadError as exc:
            raise SpecError(exc.message) from None
        if not path.is_file():
            raise f.error(field_name, f"{name!r}: the version directory has no such file")
        self.read.append(str(PurePosixPath(name)))
        return path

    def json(self, name: str, f: _Fields, field_name: str) -> object:
        path = self.path(name, f, field_name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            detail = str(exc) if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise f.error(field_name, f"{name!r}: cannot read it ({detail})") from None
