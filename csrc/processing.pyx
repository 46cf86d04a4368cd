# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython twin of runtime/processing/_py.py (the reference): same signatures, same results within float tolerance.

Built by setup.py as runtime.processing._processing. Each kernel is one typed pass that writes straight into a
preallocated output (a view into the model-input buffer); runtime/processing/kernels.py decides, per kernel,
whether this version or the numpy twin is used. The kernels raise nothing on bad data: they return the flat
index of the first bad element (or -1) and the caller words the error, so both twins report the same element.
"""
from libc.math cimport floor, exp, rint, isnan
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport malloc, free

cimport numpy as cnp

cnp.import_array()

__all__ = ["encode_categories", "resize_normalize", "scale_columns", "softmax", "topk"]

from cpython.ref cimport PyObject

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    bint PyBytes_Check(object o)

ctypedef fused pixel_out_t:
    float
    double
    uint8_t

ctypedef fused real_in_t:
    float
    double

ctypedef fused real_out_t:
    float
    double

ctypedef fused code_out_t:
    float
    double
    int32_t
    int64_t

# Unknown-category policies (runtime/processing/_py.py has the same numbers).
cdef enum:
    UNKNOWN_ERROR = 0
    UNKNOWN_OOV = 1
    UNKNOWN_ZEROS = 2


cdef int _taps(Py_ssize_t src_len, Py_ssize_t resized, Py_ssize_t offset, Py_ssize_t count,
               Py_ssize_t* i0, Py_ssize_t* i1, double* frac) noexcept nogil:
    """Bilinear taps with half-pixel centres (no antialiasing): output k samples resized position offset + k."""
    cdef double scale = <double>src_len / <double>resized
    cdef double pos
    cdef Py_ssize_t k, lo
    for k in range(count):
        pos = (<double>(offset + k) + 0.5) * scale - 0.5
        if pos < 0.0:
            pos = 0.0
        lo = <Py_ssize_t>floor(pos)
        if lo >= src_len - 1:
            i0[k] = src_len - 1
            i1[k] = src_len - 1
            frac[k] = 0.0
        else:
            i0[k] = lo
            i1[k] = lo + 1
            frac[k] = pos - <double>lo
    return 0


def resize_normalize(
    const uint8_t[:, :, :, ::1] src,
    pixel_out_t[:, :, :, ::1] out,
    Py_ssize_t resize_h,
    Py_ssize_t resize_w,
    Py_ssize_t top,
    Py_ssize_t left,
    const int64_t[::1] channel_map,
    const double[::1] mul,
    const double[::1] add,
    bint chw,
):
    """Bilinear resize to (resize_h, resize_w), crop at (top, left) to out's size, pick channels, v*mul+add,
    HWC->CHW when chw, cast (uint8: round half to even, saturate) -- one pass per output element.

    src: [n, h, w, c_in] uint8; out: [n, C, H, W] (chw) or [n, H, W, C].
    """
    cdef Py_ssize_t n = src.shape[0], h = src.shape[1], w = src.shape[2], cin = src.shape[3]
    cdef Py_ssize_t channels, oh, ow
    if chw:
        channels, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    else:
        oh, ow, channels = out.shape[1], out.shape[2], out.shape[3]
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} images, src {n}")
    if channel_map.shape[0] != channels or mul.shape[0] != channels or add.shape[0] != channels:
        raise ValueError("channel_map, mul and add need one entry per output channel")
    if n == 0 or oh == 0 or ow == 0 or channels == 0:
        return
    if h == 0 or w == 0 or resize_h < 1 or resize_w < 1:
        raise ValueError("empty source image or resize size")
    if top < 0 or left < 0 or top + oh > resize_h or left + ow > resize_w:
        raise ValueError("crop window outside the resized image")
    cdef Py_ssize_t c
    for c in range(channels):
        if channel_map[c] < 0 or channel_map[c] >= cin:
            raise ValueError(f"channel_map[{c}] = {channel_map[c]} outside the source's {cin} channels")

    cdef Py_ssize_t* ys0 = <Py_ssize_t*>malloc(oh * sizeof(Py_ssize_t))
    cdef Py_ssize_t* ys1 = <Py_ssize_t*>malloc(oh * sizeof(Py_ssize_t))
    cdef double* fys = <double*>malloc(oh * sizeof(double))
    cdef Py_ssize_t* xs0 = <Py_ssize_t*>malloc(ow * sizeof(Py_ssize_t))
    cdef Py_ssize_t* xs1 = <Py_ssize_t*>malloc(ow * sizeof(Py_ssize_t))
    cdef double* fxs = <double*>malloc(ow * sizeof(double))
    cdef float* fxf = <float*>malloc(ow * sizeof(float))
    # two source rows, resized horizontally and channel-picked, planar [channels][ow]
    cdef float* upper = <float*>malloc(channels * ow * sizeof(float))
    cdef float* lower = <float*>malloc(channels * ow * sizeof(float))
    cdef int64_t* cmap = <int64_t*>malloc(channels * sizeof(int64_t))
    cdef float* muls = <float*>malloc(channels * sizeof(float))
    cdef float* adds = <float*>malloc(channels * sizeof(float))
    cdef float* swap
    cdef Py_ssize_t i, oy, ox, y0, y1, held_upper, held_lower, held_swap
    cdef float fy, m, a, v
    cdef float* up
    cdef float* lo
    cdef pixel_out_t* dst
    try:
        if not (ys0 and ys1 and fys and xs0 and xs1 and fxs and fxf and upper and lower and cmap and muls and adds):
            raise MemoryError()
        for c in range(channels):
            cmap[c] = channel_map[c]
            muls[c] = <float>mul[c]
            adds[c] = <float>add[c]
        with nogil:
            _taps(h, resize_h, top, oh, ys0, ys1, fys)
            _taps(w, resize_w, left, ow, xs0, xs1, fxs)
            for ox in range(ow):
                fxf[ox] = <float>fxs[ox]
            for i in range(n):
                held_upper = -1
                held_lower = -1
                for oy in range(oh):
                    y0 = ys0[oy]
                    y1 = ys1[oy]
                    if held_upper != y0:
                        if held_lower == y0:  # moving down: the old lower row is the new upper one
                            swap = upper
                            upper = lower
                            lower = swap
                            held_swap = held_upper
                            held_upper = held_lower
                            held_lower = held_swap
                        else:
                            _resize_row(&src[i, y0, 0, 0], cin, xs0, xs1, fxf, cmap, channels, ow, upper)
                            held_upper = y0
                    if held_lower != y1:
                        _resize_row(&src[i, y1, 0, 0], cin, xs0, xs1, fxf, cmap, channels, ow, lower)
                        held_lower = y1
                    fy = <float>fys[oy]
                    for c in range(channels):
                        up = upper + c * ow
                        lo = lower + c * ow
                        m = muls[c]
                        a = adds[c]
                        if chw:
                            dst = &out[i, c, oy, 0]
                            for ox in range(ow):
                                v = (up[ox] + fy * (lo[ox] - up[ox])) * m + a
                                if pixel_out_t is uint8_t:
                                    dst[ox] = _saturate(v)
                                else:
                                    dst[ox] = <pixel_out_t>v
                        else:
                            dst = &out[i, oy, 0, c]
                            for ox in range(ow):
                                v = (up[ox] + fy * (lo[ox] - up[ox])) * m + a
                                if pixel_out_t is uint8_t:
                                    dst[ox * channels] = _saturate(v)
                                else:
                                    dst[ox * channels] = <pixel_out_t>v
    finally:
        free(ys0)
        free(ys1)
        free(fys)
        free(xs0)
        free(xs1)
        free(fxs)
        free(fxf)
        free(upper)
        free(lower)
        free(cmap)
        free(muls)
        free(adds)


cdef inline void _resize_row(
    const uint8_t* row, Py_ssize_t cin, const Py_ssize_t* xs0, const Py_ssize_t* xs1, const float* fx,
    const int64_t* cmap, Py_ssize_t channels, Py_ssize_t ow, float* out,
) noexcept nogil:
    """One source row resized horizontally into planar out[channels][ow], channels picked by cmap."""
    cdef Py_ssize_t c, ox, sc
    cdef float p0
    cdef float* plane
    for c in range(channels):
        sc = cmap[c]
        plane = out + c * ow
        for ox in range(ow):
            p0 = row[xs0[ox] * cin + sc]
            plane[ox] = p0 + fx[ox] * (<float>row[xs1[ox] * cin + sc] - p0)


cdef inline uint8_t _saturate(float v) noexcept nogil:
    """Round half to even, then clamp to 0..255."""
    cdef double r = rint(v)
    if r < 0.0:
        return 0
    if r > 255.0:
        return 255
    return <uint8_t>r


def scale_columns(
    const real_in_t[:, ::1] src,
    real_out_t[:, :] out,
    const uint8_t[::1] missing_error,
    const double[::1] fill,
    const double[::1] lo,
    const double[::1] hi,
    const double[::1] mul,
    const double[::1] add,
):
    """Per column j: NaN -> error (missing_error[j]) or fill[j] (NaN fill keeps NaN), clip to [lo[j], hi[j]],
    then v*mul[j]+add[j], cast into out (may be a column slice of a wider buffer).

    Returns the flat index (row * columns + column) of the first NaN under the error policy, else -1.
    """
    cdef Py_ssize_t rows = src.shape[0], cols = src.shape[1]
    if out.shape[0] != rows or out.shape[1] != cols:
        raise ValueError("out must have src's shape")
    if (missing_error.shape[0] != cols or fill.shape[0] != cols or lo.shape[0] != cols or hi.shape[0] != cols
            or mul.shape[0] != cols or add.shape[0] != cols):
        raise ValueError("every per-column parameter needs one entry per column")
    cdef Py_ssize_t r, j, bad = -1
    if rows == 0 or cols == 0:
        return -1
    cdef Py_ssize_t step = out.strides[1] // <Py_ssize_t>sizeof(real_out_t)
    cdef const uint8_t* error_p = &missing_error[0]
    cdef const double* fill_p = &fill[0]
    cdef const double* lo_p = &lo[0]
    cdef const double* hi_p = &hi[0]
    cdef const double* mul_p = &mul[0]
    cdef const double* add_p = &add[0]
    cdef const real_in_t* row
    cdef real_out_t* dst
    cdef double v
    with nogil:
        for r in range(rows):
            row = &src[r, 0]
            dst = &out[r, 0]
            for j in range(cols):
                v = row[j]
                if v != v:  # NaN
                    if error_p[j]:
                        bad = r * cols + j
                        break
                    v = fill_p[j]
                if v < lo_p[j]:
                    v = lo_p[j]
                elif v > hi_p[j]:
                    v = hi_p[j]
                dst[j * step] = <real_out_t>(v * mul_p[j] + add_p[j])
            if bad >= 0:
                break
    return bad


def encode_categories(
    object[:, :] src,
    list lookups,
    code_out_t[:, :] out,
    const int64_t[::1] offsets,
    bint onehot,
    int unknown,
):
    """Column j's strings through the dict lookups[j] (bytes -> code; str elements are UTF-8 encoded).

    index: out[r, offsets[j]] = code; onehot: out[r, offsets[j] + code] = 1 (out must be zeroed).
    Unknown strings: policy error -> return the flat index of the first; oov -> code len(lookups[j]);
    zeros -> leave the row's one-hot block at zero. Returns -1 when every string was handled.
    """
    cdef Py_ssize_t rows = src.shape[0], cols = src.shape[1]
    if len(lookups) != cols or offsets.shape[0] != cols or out.shape[0] != rows:
        raise ValueError("lookups and offsets need one entry per column; out one row per row")
    cdef Py_ssize_t r, j, code, width = out.shape[1]
    cdef PyObject* found
    cdef object item, lookup
    cdef list lookup_list = lookups
    for j in range(cols):
        lookup = lookup_list[j]
        if type(lookup) is not dict:
            raise TypeError("lookups must be dicts")
        if offsets[j] < 0 or offsets[j] >= width:
            raise ValueError(f"offsets[{j}] = {offsets[j]} is outside out's {width} columns")
    for r in range(rows):
        for j in range(cols):
            item = src[r, j]
            if not PyBytes_Check(item):
                item = (<str?>item).encode("utf-8")
            lookup = lookup_list[j]
            found = PyDict_GetItemWithError(lookup, item)
            if found is NULL:
                if unknown == UNKNOWN_ERROR:
                    return r * cols + j
                if unknown == UNKNOWN_ZEROS:
                    continue
                code = len(<dict>lookup)
            else:
                code = <Py_ssize_t>(<object>found)
            if onehot:
                if offsets[j] + code >= width:
                    raise ValueError(f"code {code} of column {j} is outside out's {width} columns")
                out[r, offsets[j] + code] = 1
            else:
                out[r, offsets[j]] = <code_out_t>code
    return -1


def softmax(const real_in_t[:, ::1] x, real_in_t[:, ::1] out):
    """Row-wise softmax over the last axis: exp(x - max) / sum, computed in double."""
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], r, j
    if out.shape[0] != rows or out.shape[1] != cols:
        raise ValueError("out must have x's shape")
    cdef double top, total, e
    with nogil:
        for r in range(rows):
            if cols == 0:
                continue
            top = x[r, 0]
            for j in range(1, cols):
                if x[r, j] > top:
                    top = x[r, j]
            total = 0.0
            for j in range(cols):
                e = exp(x[r, j] - top)
                out[r, j] = <real_in_t>e
                total += e
            total = 1.0 / total
            for j in range(cols):
                out[r, j] = <real_in_t>(out[r, j] * total)


cdef inline bint _ahead(double a, double b) noexcept nogil:
    """True when a ranks strictly before b: larger first, NaN last."""
    if isnan(a):
        return False
    if isnan(b):
        return True
    return a > b


def topk(const real_in_t[:, ::1] x, Py_ssize_t k, real_in_t[:, ::1] values, int64_t[:, ::1] indices):
    """Per row the k largest values, largest first; ties keep the lower index first; NaN ranks last."""
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], r, j, m, filled
    if k < 0 or k > cols:
        raise ValueError(f"k = {k} outside 0..{cols}")
    if values.shape[0] != rows or indices.shape[0] != rows or values.shape[1] != k or indices.shape[1] != k:
        raise ValueError("values and indices must be [rows, k]")
    cdef double v
    if k == 0:
        return
    with nogil:
        for r in range(rows):
            filled = 0
            for j in range(cols):
                v = x[r, j]
                if filled == k and not _ahead(v, values[r, k - 1]):
                    continue
                # insertion: shift worse entries down by one, ties stay ahead of later indices
                m = filled if filled < k else k - 1
                while m > 0 and _ahead(v, values[r, m - 1]):
                    values[r, m] = values[r, m - 1]
                    indices[r, m] = indices[r, m - 1]
                    m -= 1
                values[r, m] = <real_in_t>v
                indices[r, m] = j
                if filled < k:
                    filled += 1
