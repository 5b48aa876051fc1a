"""Memory helpers of fastrnn._workspace.

``_workspace.empty`` starts every array of 4 KB or more on a cache line, as a view of a byte
buffer some bytes past its start. Reading the buffer's address through NumPy
(``__array_interface__`` or ``.ctypes``) built a dict or a ctypes object: 0.8 of the 1.9 us
that each such array cost, and a small training forward + backward allocates six to nine.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer


def line_offset(buf, Py_ssize_t line) -> int:
    """Bytes from the start of ``buf`` (any object with the buffer protocol) to its first
    ``line``-byte boundary (``line`` a power of two)."""
    cdef Py_buffer v
    cdef size_t address
    if line < 1 or line & (line - 1):
        raise ValueError(f"line must be a power of two, got {line}")
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    address = <size_t> v.buf
    PyBuffer_Release(&v)
    return <Py_ssize_t> ((line - (address & <size_t> (line - 1))) & <size_t> (line - 1))
