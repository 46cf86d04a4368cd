# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython twin of runtime/codec/_py.py (the reference): same signatures, results, exceptions and messages.

Built by setup.py as runtime.codec._codec. Typed loops write straight into preallocated numpy buffers or
one preallocated bytes object; error messages come from runtime.codec._errors so both twins agree.
runtime/codec/__init__.py decides, per function, whether this version or the numpy one is exported.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.ref cimport PyObject
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cimport numpy as cnp

import numpy as np

from runtime.codec import _errors as E
from runtime.codec._errors import CodecError

cnp.import_array()

__all__ = ["CodecError", "array_to_json", "decode_bytes", "encode_bytes", "json_to_array"]


cdef extern from "Python.h":
    # Raw declarations: NULL-returning calls handled here, references stolen/borrowed explicitly.
    PyObject* PyBytes_FromStringAndSize(const char* data, Py_ssize_t size) except NULL
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    bint PyBytes_Check(object o)
    bint PyBytes_CheckExact(object o)
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size)  # NULL + exception on surrogates
    PyObject* PyUnicode_AsUTF8String(object o)  # NULL + exception on surrogates
    PyObject* PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors) except NULL
    bint PyList_Check(object o)
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i)
    object PyList_New(Py_ssize_t size)
    void PyList_SET_ITEM(object o, Py_ssize_t i, PyObject* item)  # steals item
    bint PyFloat_Check(object o)
    bint PyFloat_CheckExact(object o)
    double PyFloat_AS_DOUBLE(object o)
    PyObject* PyFloat_FromDouble(double v) except NULL
    bint PyLong_Check(object o)
    bint PyLong_CheckExact(object o)
    bint PyBool_Check(object o)
    double PyLong_AsDouble(object o)  # -1.0 + OverflowError when too big
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow)
    unsigned long long PyLong_AsUnsignedLongLong(object o)  # (ull)-1 + OverflowError when out of range
    PyObject* PyLong_FromLongLong(long long v) except NULL
    PyObject* PyLong_FromUnsignedLongLong(unsigned long long v) except NULL
    PyObject* PyBool_FromLong(long v)
    PyObject* Py_True
    PyObject* Py_False
    object _new_bytes "PyBytes_FromStringAndSize"(const char* data, Py_ssize_t size)
    void Py_INCREF_raw "Py_INCREF"(PyObject* o)
    void Py_DECREF_raw "Py_DECREF"(PyObject* o)
    void Py_XDECREF_raw "Py_XDECREF"(PyObject* o)


cdef Py_ssize_t MAX_DEPTH = E.MAX_DEPTH
cdef Py_ssize_t MAX_ELEMENT = 0xFFFFFFFF
# Above this many elements json_to_array validates before allocating `count` elements, so a request that
# claims a huge shape with little data cannot make us allocate the claimed size.
cdef Py_ssize_t PREALLOC_LIMIT = 1 << 22


# BYTES binary form ------------------------------------------------------------------------------------------
cdef inline uint32_t _load_le32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0]) | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline void _store_le32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef int _decode_into(const unsigned char* p, Py_ssize_t end, Py_ssize_t count, PyObject** slots) except -1:
    """Parse `count` elements; store new bytes objects into `slots` unless it is NULL (validation only)."""
    cdef Py_ssize_t pos = 0, index, left, length
    cdef PyObject* item
    for index in range(count):
        left = end - pos
        if left < 4:
            if left == 0:
                raise E.wrong_count(count, index)
            raise E.truncated_prefix(index, left)
        length = _load_le32(p + pos)
        pos += 4
        left -= 4
        if length > left:
            raise E.overrun(index, length, left)
        if slots != NULL:
            item = PyBytes_FromStringAndSize(<const char*>(p + pos), length)
            Py_XDECREF_raw(slots[index])  # np.empty(object) holds None
            slots[index] = item
        pos += length
    if pos != end:
        raise E.trailing(count, end - pos)
    return 0


def decode_bytes(buffer, Py_ssize_t count):
    """Length-prefixed (uint32 LE) elements -> 1-D object array of exactly `count` bytes objects."""
    cdef Py_buffer view
    cdef cnp.ndarray out
    if count < 0:
        raise E.negative_count(count)
    try:
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    except BufferError:  # e.g. a non-contiguous memoryview: copy it, as the reference does
        buffer = memoryview(buffer).tobytes()
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        if count > view.len // 4:  # cannot all be there: find the precise error without allocating
            _decode_into(<const unsigned char*>view.buf, view.len, count, NULL)
        out = np.empty(count, dtype=object)
        _decode_into(<const unsigned char*>view.buf, view.len, count, <PyObject**>cnp.PyArray_DATA(out))
        return out
    finally:
        PyBuffer_Release(&view)


cdef int _utf8_failure(Py_ssize_t index, object value) except -1:
    PyErr_Clear()
    try:
        str.encode(value, "utf-8")
    except UnicodeEncodeError as exc:
        raise E.not_utf8(index, exc) from None
    raise AssertionError("UTF-8 encoding failed once and then succeeded")


cdef bytes _encode_objects(PyObject** items, Py_ssize_t n):
    cdef Py_ssize_t i, length, total = 0
    cdef const char* src
    cdef unsigned char* dst
    cdef object value
    for i in range(n):
        value = <object>items[i]
        if PyBytes_Check(value):
            length = PyBytes_GET_SIZE(value)
        elif PyUnicode_Check(value):
            if PyUnicode_AsUTF8AndSize(value, &length) == NULL:  # cached in the str for the 2nd pass
                _utf8_failure(i, value)
        else:
            raise E.not_bytes(i, value)
        if length > MAX_ELEMENT:
            raise E.too_long(i, length)
        total += 4 + length
    cdef bytes result = _new_bytes(NULL, total)
    cdef Py_ssize_t room = total
    dst = <unsigned char*>PyBytes_AS_STRING(result)
    for i in range(n):
        # Allocating `result` may have run a finalizer that changed the array (the items can be a view of
        # the caller's): check again rather than write past the end.
        value = <object>items[i]
        if PyBytes_Check(value):
            length = PyBytes_GET_SIZE(value)
            src = PyBytes_AS_STRING(value)
        elif PyUnicode_Check(value):
            src = PyUnicode_AsUTF8AndSize(value, &length)
            if src == NULL:
                _utf8_failure(i, value)
        else:
            raise E.not_bytes(i, value)
        if length > MAX_ELEMENT or 4 + length > room:
            raise RuntimeError("the array changed while it was being encoded")
        _store_le32(dst, <uint32_t>length)
        memcpy(dst + 4, src, length)
        dst += 4 + length
        room -= 4 + length
    if room != 0:
        raise RuntimeError("the array changed while it was being encoded")
    return result


cdef bytes _encode_fixed(cnp.ndarray flat):
    """An 'S' array: elements are its fixed-width items with trailing NULs stripped, as numpy reads them."""
    cdef Py_ssize_t n = flat.shape[0], width = flat.dtype.itemsize, i, length, total = 0
    cdef const unsigned char* src = <const unsigned char*>cnp.PyArray_DATA(flat)
    cdef const unsigned char* item
    cdef unsigned char* dst
    for i in range(n):
        item = src + i * width
        length = width
        while length > 0 and item[length - 1] == 0:
            length -= 1
        total += 4 + length
    cdef bytes result = _new_bytes(NULL, total)
    dst = <unsigned char*>PyBytes_AS_STRING(result)
    for i in range(n):
        item = src + i * width
        length = width
        while length > 0 and item[length - 1] == 0:
            length -= 1
        _store_le32(dst, <uint32_t>length)
        memcpy(dst + 4, item, length)
        dst += 4 + length
    return result


def encode_bytes(array):
    """Any-shape array of bytes/str (object, S or U dtype), row-major -> length-prefixed bytes."""
    cdef cnp.ndarray flat
    if not isinstance(array, np.ndarray):
        raise TypeError(f"encode_bytes needs a numpy array, got {type(array).__name__}")
    kind = array.dtype.kind
    if kind == "S":
        return _encode_fixed(array.ravel())
    if kind == "U":
        flat = array.ravel().astype(object)
    elif kind == "O":
        flat = array.ravel()  # always C-contiguous, a copy only when it must be
    else:
        raise E.not_bytes_array(array.dtype)
    return _encode_objects(<PyObject**>cnp.PyArray_DATA(flat), flat.shape[0])


# JSON form --------------------------------------------------------------------------------------------------
cdef enum Kind:
    K_BOOL
    K_INT
    K_UINT
    K_FLOAT
    K_BYTES


cdef struct Walk:
    Py_ssize_t index  # flat index of the next element
    Py_ssize_t capacity  # elements `out` can take; later ones are validated, not stored
    char* out
    Kind kind
    int itemsize  # of the buffer written (FP16 goes through a float64 buffer)
    long long imin
    long long imax
    unsigned long long umax


cdef int _element(Walk* w, object value, object dtype) except -1:
    cdef Py_ssize_t i = w.index
    cdef bint store = i < w.capacity
    cdef double d
    cdef long long v
    cdef unsigned long long u
    cdef int overflow = 0
    cdef PyObject* encoded
    cdef PyObject** slot
    if w.kind == K_FLOAT:
        if PyFloat_CheckExact(value):
            d = PyFloat_AS_DOUBLE(value)
        elif PyLong_CheckExact(value) or (PyLong_Check(value) and not PyBool_Check(value)):
            d = PyLong_AsDouble(value)
            if d == -1.0 and PyErr_Occurred() != NULL:
                PyErr_Clear()
                raise E.out_of_range(i, dtype, value)
        elif PyFloat_Check(value):
            d = PyFloat_AS_DOUBLE(value)
        else:
            raise E.wrong_type(i, dtype, value)
        if store:
            if w.itemsize == 4:
                (<float*>w.out)[i] = <float>d
            else:
                (<double*>w.out)[i] = d
    elif w.kind == K_INT or w.kind == K_UINT:
        if not PyLong_Check(value) or PyBool_Check(value):
            raise E.wrong_type(i, dtype, value)
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if w.kind == K_INT:
            if overflow != 0 or v < w.imin or v > w.imax:
                raise E.out_of_range(i, dtype, value)
            if store:
                if w.itemsize == 8:
                    (<int64_t*>w.out)[i] = v
                elif w.itemsize == 4:
                    (<int32_t*>w.out)[i] = <int32_t>v
                elif w.itemsize == 2:
                    (<int16_t*>w.out)[i] = <int16_t>v
                else:
                    (<int8_t*>w.out)[i] = <int8_t>v
        else:
            if overflow == 0:
                if v < 0:
                    raise E.out_of_range(i, dtype, value)
                u = <unsigned long long>v
            elif overflow > 0:
                u = PyLong_AsUnsignedLongLong(value)
                if u == <unsigned long long>-1 and PyErr_Occurred() != NULL:
                    PyErr_Clear()
                    raise E.out_of_range(i, dtype, value)
            else:
                raise E.out_of_range(i, dtype, value)
            if u > w.umax:
                raise E.out_of_range(i, dtype, value)
            if store:
                if w.itemsize == 8:
                    (<uint64_t*>w.out)[i] = u
                elif w.itemsize == 4:
                    (<uint32_t*>w.out)[i] = <uint32_t>u
                elif w.itemsize == 2:
                    (<uint16_t*>w.out)[i] = <uint16_t>u
                else:
                    (<uint8_t*>w.out)[i] = <uint8_t>u
    elif w.kind == K_BOOL:
        if <PyObject*>value == Py_True:
            if store:
                (<uint8_t*>w.out)[i] = 1
        elif <PyObject*>value == Py_False:
            if store:
                (<uint8_t*>w.out)[i] = 0
        else:
            raise E.wrong_type(i, dtype, value)
    else:
        if not PyUnicode_Check(value):
            raise E.wrong_type(i, dtype, value)
        encoded = PyUnicode_AsUTF8String(value)
        if encoded == NULL:
            _utf8_failure(i, value)
        if store:
            slot = (<PyObject**>w.out) + i
            Py_XDECREF_raw(slot[0])  # np.empty(object) holds None
            slot[0] = encoded
        else:
            Py_DECREF_raw(encoded)
    return 0


cdef int _walk(Walk* w, object items, Py_ssize_t depth, object dtype) except -1:
    """Visit `items` (a list at nesting `depth`) in row-major order; exact floats take the inline path."""
    cdef Py_ssize_t j = 0, i
    cdef PyObject* value  # borrowed: fine on the inline path, which runs no code and allocates nothing
    cdef object held
    cdef bint floats = w.kind == K_FLOAT
    cdef bint single = w.itemsize == 4
    while j < PyList_GET_SIZE(items):  # re-read: code run by an allocation below could shrink the list
        value = PyList_GET_ITEM(items, j)
        j += 1
        i = w.index
        if floats and PyFloat_CheckExact(<object>value) and i < w.capacity:
            if single:
                (<float*>w.out)[i] = <float>PyFloat_AS_DOUBLE(<object>value)
            else:
                (<double*>w.out)[i] = PyFloat_AS_DOUBLE(<object>value)
            w.index = i + 1
            continue
        held = <object>value  # a strong reference from here on
        if PyList_Check(held):
            if depth >= MAX_DEPTH:
                raise E.too_deep(i)
            _walk(w, held, depth + 1, dtype)
        else:
            _element(w, held, dtype)
            w.index = i + 1
    return 0


def json_to_array(data, dtype, Py_ssize_t count):
    """V2 JSON `data` (flat or nested lists, row-major) -> flat 1-D array of `dtype` with `count` elements."""
    cdef Walk w
    cdef cnp.ndarray out
    dt = E.check_dtype(dtype)
    if not isinstance(data, list):
        raise E.not_a_list(data)
    kind = dt.kind
    native = dt if dt.isnative else dt.newbyteorder("=")
    w.itemsize = dt.itemsize
    if kind == "f":
        w.kind = K_FLOAT
        if dt.itemsize == 2:
            native = np.dtype(np.float64)
            w.itemsize = 8
    elif kind == "b":
        w.kind = K_BOOL
    elif kind == "O":
        w.kind = K_BYTES
    elif kind == "i":
        w.kind = K_INT
        info = np.iinfo(dt)
        w.imin = info.min
        w.imax = info.max
    else:
        w.kind = K_UINT
        w.umax = np.iinfo(dt).max

    if count < 0 or (count > PyList_GET_SIZE(data) and count > PREALLOC_LIMIT):
        w.index = 0
        w.capacity = 0
        w.out = NULL
        _walk(&w, data, 1, dt)
        if w.index != count:
            raise E.wrong_count(count, w.index)

    out = np.empty(count, dtype=native)
    w.index = 0
    w.capacity = count
    w.out = <char*>cnp.PyArray_DATA(out)
    _walk(&w, data, 1, dt)
    if w.index != count:
        raise E.wrong_count(count, w.index)
    if native is not dt:
        with np.errstate(over="ignore"):  # FP16 overflow becomes inf, as in the reference
            return out.astype(dt)
    return out


# JSON output ------------------------------------------------------------------------------------------------
cdef list _texts(PyObject** items, Py_ssize_t n):
    cdef Py_ssize_t i
    cdef object value, converted
    cdef list result = PyList_New(n)  # NULL slots; a list freed half-filled skips them
    cdef PyObject* text
    for i in range(n):
        value = <object>items[i]
        if PyBytes_Check(value):
            text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), "replace")
        elif PyUnicode_CheckExact(value):
            text = <PyObject*>value
            Py_INCREF_raw(text)
        elif PyUnicode_Check(value):
            converted = str(value)
            text = <PyObject*>converted
            Py_INCREF_raw(text)
        else:
            raise E.not_bytes(i, value)
        PyList_SET_ITEM(result, i, text)
    return result


cdef list _floats(cnp.ndarray flat):
    cdef Py_ssize_t i, n = flat.shape[0]
    cdef list result = PyList_New(n)
    cdef const float* src32
    cdef const double* src64
    if flat.dtype.itemsize == 4:
        src32 = <const float*>cnp.PyArray_DATA(flat)
        for i in range(n):
            PyList_SET_ITEM(result, i, PyFloat_FromDouble(src32[i]))
    else:
        src64 = <const double*>cnp.PyArray_DATA(flat)
        for i in range(n):
            PyList_SET_ITEM(result, i, PyFloat_FromDouble(src64[i]))
    return result


def array_to_json(array):
    """Flat row-major list of Python scalars for a JSON reply; BYTES elements decoded as UTF-8 (replace)."""
    cdef cnp.ndarray flat
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array_to_json needs a numpy array, got {type(array).__name__}")
    dt = array.dtype
    kind = dt.kind
    if kind == "f" and dt.itemsize in (2, 4, 8):
        if dt.itemsize == 2 or not dt.isnative:
            flat = array.ravel().astype(np.float32 if dt.itemsize <= 4 else np.float64)
        else:
            flat = array.ravel()
        return _floats(flat)
    if kind in "biuU":
        return array.ravel().tolist()  # numpy's own loop is as fast as a typed one here
    if kind == "S":
        flat = array.ravel().astype(object)
    elif kind == "O":
        flat = array.ravel()
    else:
        raise E.not_json_array(dt)
    return _texts(<PyObject**>cnp.PyArray_DATA(flat), flat.shape[0])
