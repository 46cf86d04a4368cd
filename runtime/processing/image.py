"""The image pre-processing step: encoded JPEG/PNG (BYTES) or UINT8 HWC pixels -> the model's image tensor.

Pillow decodes; one fused kernel (kernels.resize_normalize) then resizes (bilinear, half-pixel centres, no
antialiasing), centre-crops to the model's size, reorders channels, scales, normalises by mean/std, lays
out CHW or HWC and casts, writing each image straight into its rows of the request's model-input buffer.
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from runtime.errors import InvalidInput
from runtime.processing import kernels
from runtime.processing.spec import ImageSpec, SpecError
from runtime.types import Array, TensorSpec

# Leading bytes of the formats Pillow decodes for us; anything else may be base64 text when allowed.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint8))
_MODEL_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8}
_SOURCE_ORDER = {"RGB": (0, 1, 2), "BGR": (2, 1, 0)}


@dataclass(frozen=True, slots=True)
class ImageGeometry:
    """Where the model's image sits in its input tensor."""

    channels: int
    height: int
    width: int
    chw: bool


class ImageStep:
    """One image step bound to its model input (see ImageSpec for the fields)."""

    def __init__(self, spec: ImageSpec, model_input: TensorSpec) -> None:
        self.spec = spec
        self.input = spec.input
        where = spec.where
        if model_input.datatype not in _MODEL_DTYPES:
            raise SpecError(
                f"{where}: field 'model_input': {model_input.name!r} is {model_input.datatype}; an image step "
                f"fills FP32, FP64, FP16 or UINT8"
            )
        if len(model_input.shape) != 4:
            raise SpecError(
                f"{where}: field 'model_input': {model_input.name!r} has shape {list(model_input.shape)}; an image "
                "step needs [rows, C, H, W] (layout NCHW) or [rows, H, W, C] (NHWC)"
            )
        dims = model_input.shape[1:]
        chw = spec.layout == "NCHW"
        channels, height, width = (dims[0], dims[1], dims[2]) if chw else (dims[2], dims[0], dims[1])
        if min(channels, height, width) < 1:
            raise SpecError(
                f"{where}: field 'layout': {model_input.name!r} dims {list(dims)} read as {spec.layout} need a fixed "
                "channel count, height and width"
            )
        if channels not in (1, 3):
            raise SpecError(
                f"{where}: field 'layout': {model_input.name!r} has {channels} channels read as {spec.layout}; "
                "an image step makes 1 (L) or 3 (RGB/BGR)"
            )
        self.geometry = ImageGeometry(channels, height, width, chw)
        order = spec.channel_order or ("L" if channels == 1 else "RGB")
        if (order == "L") != (channels == 1):
            raise SpecError(f"{where}: field 'channel_order': {order!r} does not fit the model's {channels} channels")
        for name, values in (("mean", spec.mean), ("std", spec.std)):
            if values is not None and len(values) != channels:
                raise SpecError(
                    f"{where}: field {name!r}: needs {channels} numbers (one per model channel), got {len(values)}"
                )
        if spec.resize is not None and (spec.resize[0] < height or spec.resize[1] < width):
            raise SpecError(
                f"{where}: field 'resize': {list(spec.resize)} is smaller than the model's {height}x{width} crop"
            )
        if spec.shorter_side is not None and spec.shorter_side < max(height, width):
            raise SpecError(
                f"{where}: field 'resize': shorter_side {spec.shorter_side} is smaller than the model's "
                f"{height}x{width} crop"
            )
        if channels == 1:
            source: tuple[int, ...] = (0,)
            self.channel_map = np.zeros(1, dtype=np.int64)
        else:
            source = _SOURCE_ORDER["RGB" if spec.format == "encoded" else spec.input_channel_order]
            wanted = _SOURCE_ORDER[order]
            self.channel_map = np.array([source.index(wanted[c]) for c in range(3)], dtype=np.int64)
        mean = np.array(spec.mean if spec.mean is not None else (0.0,) * channels, dtype=np.float64)
        std = np.array(spec.std if spec.std is not None else (1.0,) * channels, dtype=np.float64)
        self.mul = spec.scale / std
        self.add = -mean / std
        self.dtype = np.dtype(_MODEL_DTYPES[model_input.datatype])
        self.mode = "L" if channels == 1 else "RGB"
        lead = model_input.shape[0]
        if spec.format == "encoded":
            self.public = TensorSpec(spec.input, "BYTES", (lead, 1))
        else:
            self.public = TensorSpec(spec.input, "UINT8", (lead, -1, -1, channels))

    def model_shape(self) -> tuple[int, ...]:
        g = self.geometry
        return (g.channels, g.height, g.width) if g.chw else (g.height, g.width, g.channels)

    def run(self, label: str, array: Array, out: Array) -> None:
        """Fill out ([rows, *model_shape()]) from the request's public input."""
        if self.spec.format == "hwc":
            pixels = np.ascontiguousarray(array, dtype=np.uint8)
            if pixels.shape[1] < 1 or pixels.shape[2] < 1:
                raise InvalidInput(f"{label}: input {self.input!r}: images of {pixels.shape[1]}x{pixels.shape[2]} pixels are empty")
            self._fill(pixels, out)
            return
        for row in range(array.shape[0]):
            pixels = self.decode(label, row, array[row, 0])
            self._fill(pixels[None], out[row : row + 1])

    def decode(self, label: str, row: int, data: object) -> npt.NDArray[np.uint8]:
        """One encoded image -> HWC uint8 pixels with the model's channel count (RGB or L)."""
        where = f"{label}: input {self.input!r} row {row}"
        if not isinstance(data, bytes):
            raise InvalidInput(f"{where}: expected the bytes of an encoded image, got {type(data).__name__}")
        if self.spec.base64 and not data.startswith(_MAGIC):
            try:
                data = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                pass  # not base64 either: let Pillow say what it is not
        try:
            image = Image.open(io.BytesIO(data), formats=self.spec.formats)
        except Image.DecompressionBombError as exc:
            raise InvalidInput(f"{where}: image too large: {exc}") from None
        except UnidentifiedImageError as exc:
            raise InvalidInput(f"{where}: not a decodable {'/'.join(self.spec.formats)} image ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... on bad data
            raise InvalidInput(f"{where}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None
        with image:
            if image.width * image.height > self.spec.max_pixels:
                raise InvalidInput(
                    f"{where}: image of {image.width}x{image.height} pixels is over the {self.spec.max_pixels}-pixel limit"
                )
            try:
                image.load()
            except Exception as exc:  # noqa: BLE001 - truncated or corrupt data, any decoder error
                raise InvalidInput(
                    f"{where}: corrupt or truncated {image.format} image ({type(exc).__name__}: {exc})"
                ) from None
            if image.width < 1 or image.height < 1:
                raise InvalidInput(f"{where}: image has no pixels")
            converted = self._to_mode(where, image)
            pixels = np.asarray(converted, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return pixels

    def _to_mode(self, where: str, image: Image.Image) -> Image.Image:
        mode = image.mode
        if mode == "P":  # a palette is an encoding detail, not a channel count
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            mode = image.mode
        elif mode == "1":
            image = image.convert("L")
            mode = "L"
        if mode == self.mode:
            return image
        if self.spec.convert:
            try:
                return image.convert(self.mode)
            except Exception as exc:  # noqa: BLE001 - Pillow has no common conversion error
                raise InvalidInput(f"{where}: cannot convert a {mode} image to {self.mode} ({exc})") from None
        bands = len(image.getbands())
        if bands == self.geometry.channels:
            problem = f"image mode {mode} is not 8-bit {self.mode}"
        else:
            problem = f"image has {bands} channel{'s' if bands != 1 else ''} (mode {mode}), the model expects {self.geometry.channels}"
        raise InvalidInput(f"{where}: {problem}; send {self.mode} images or set \"convert\": true in the model's processing spec")

    def _fill(self, pixels: npt.NDArray[np.uint8], out: Array) -> None:
        """Resize/crop/normalise a batch of same-sized HWC images into out (rows of the model input)."""
        g = self.geometry
        h, w = pixels.shape[1], pixels.shape[2]
        resize_h, resize_w = self.resized_size(h, w)
        top, left = (resize_h - g.height) // 2, (resize_w - g.width) // 2
        target = out if out.dtype in _KERNEL_DTYPES else np.empty(out.shape, dtype=np.float32)
        kernels.resize_normalize(
            pixels, target, resize_h, resize_w, top, left, self.channel_map, self.mul, self.add, g.chw
        )
        if target is not out:
            out[...] = target

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) of the image after the resize, before the centre crop."""
        g = self.geometry
        if self.spec.resize is not None:
            return self.spec.resize
        if self.spec.shorter_side is not None:
            short = self.spec.shorter_side
            if h <= w:
                return short, max(short, int(w * short / h))
            return max(short, int(h * short / w)), short
        return g.height, g.width
