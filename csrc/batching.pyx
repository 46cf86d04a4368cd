# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Cython twin of runtime/batching/_py.py: gather request tensors into one batch buffer.

Built by setup.py as runtime.batching._batching; runtime/batching/collate.py decides whether this
version or the numpy twin is used (bench/bench_collate.py measures both).
"""
from libc.string cimport memcpy

cimport numpy as cnp

cnp.import_array()

__all__ = ["gather"]


def gather(list arrays, cnp.ndarray out):
    """Copy the arrays' rows one after another into `out` (C-contiguous, same dtype, rows summing to
    out's first dim, the same trailing dims); return `out`. Object arrays are not handled here."""
    cdef Py_ssize_t offset = 0, nbytes, axis, total = cnp.PyArray_NBYTES(out)
    cdef char* dest = <char*> cnp.PyArray_DATA(out)
    cdef cnp.ndarray array
    if not cnp.PyArray_IS_C_CONTIGUOUS(out):
        raise ValueError("gather: the output buffer must be C-contiguous")
    for item in arrays:
        array = <cnp.ndarray> item
        if cnp.PyArray_TYPE(array) != cnp.PyArray_TYPE(out) or cnp.PyArray_TYPE(out) == cnp.NPY_OBJECT:
            raise ValueError("gather: arrays must share the output's (non-object) dtype")
        if array.ndim != out.ndim:
            raise ValueError("gather: arrays must have the output's trailing dims")
        for axis in range(1, out.ndim):
            if array.shape[axis] != out.shape[axis]:
                raise ValueError("gather: arrays must have the output's trailing dims")
        if not cnp.PyArray_IS_C_CONTIGUOUS(array):
            array = cnp.PyArray_GETCONTIGUOUS(array)
        nbytes = cnp.PyArray_NBYTES(array)
        if offset + nbytes > total:
            raise ValueError("gather: the arrays' rows do not add up to the output's")
        memcpy(dest + offset, cnp.PyArray_DATA(array), nbytes)
        offset += nbytes
    if offset != total:
        raise ValueError("gather: the arrays' rows do not add up to the output's")
    return out
