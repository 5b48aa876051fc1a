# A stand-in for another project's Cython extension: it cimports fastrnn's stable C API
# (fastrnn/capi/{rnn,lstm,gru}.pxd) and calls it on buffers it is given. Built at test time
# by tests/test_cimport.py, never as part of fastrnn.

from cython cimport floating

from fastrnn.capi.gru cimport (gru_backward_f32, gru_backward_f64, gru_forward_f32,
                               gru_forward_f64, gru_reserve_size, gru_workspace_size)
from fastrnn.capi.lstm cimport (lstm_backward_f32, lstm_backward_f64, lstm_forward_f32,
                                lstm_forward_f64, lstm_reserve_size, lstm_workspace_size)
from fastrnn.capi.rnn cimport (rnn_backward_f32, rnn_backward_f64, rnn_forward_f32,
                               rnn_forward_f64, rnn_reserve_size, rnn_workspace_size)


cdef inline floating* _p(floating[::1] a) noexcept nogil:
    """The buffer of a, or NULL for None (built with boundscheck=False)."""
    return NULL if a is None else &a[0]


cdef int _cell(str cell) except -1:
    if cell not in ("rnn", "lstm", "gru"):
        raise ValueError(cell)
    return ("rnn", "lstm", "gru").index(cell)


def sizes(str cell, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H):
    """(reserve, workspace) element counts."""
    if cell == "lstm":
        return lstm_reserve_size(T, B, I, H), lstm_workspace_size(T, B, I, H)
    if cell == "gru":
        return gru_reserve_size(T, B, I, H), gru_workspace_size(T, B, I, H)
    return rnn_reserve_size(T, B, I, H), rnn_workspace_size(T, B, I, H)


def forward(str cell, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
            floating[::1] x, floating[::1] h0, floating[::1] c0, floating[::1] w_ih,
            floating[::1] w_hh, floating[::1] b_ih, floating[::1] b_hh, int[::1] batch_sizes,
            floating[::1] y, floating[::1] h_n, floating[::1] c_n, floating[::1] reserve,
            floating[::1] work, bint use_relu=False, int n_threads=1):
    """One forward through the C API, without the GIL; returns its status code."""
    cdef const int* bs = NULL if batch_sizes is None else &batch_sizes[0]
    cdef int rc, c = _cell(cell)
    with nogil:
        if floating is float:
            if c == 1:
                rc = lstm_forward_f32(T, B, I, H, _p(x), _p(h0), _p(c0), _p(w_ih), _p(w_hh),
                                      _p(b_ih), _p(b_hh), bs, _p(y), _p(h_n), _p(c_n),
                                      _p(reserve), _p(work), n_threads)
            elif c == 2:
                rc = gru_forward_f32(T, B, I, H, _p(x), _p(h0), _p(w_ih), _p(w_hh), _p(b_ih),
                                     _p(b_hh), bs, _p(y), _p(h_n), _p(reserve), _p(work),
                                     n_threads)
            else:
                rc = rnn_forward_f32(T, B, I, H, _p(x), _p(h0), _p(w_ih), _p(w_hh), _p(b_ih),
                                     _p(b_hh), bs, _p(y), _p(h_n), _p(reserve), _p(work),
                                     use_relu, n_threads)
        else:
            if c == 1:
                rc = lstm_forward_f64(T, B, I, H, _p(x), _p(h0), _p(c0), _p(w_ih), _p(w_hh),
                                      _p(b_ih), _p(b_hh), bs, _p(y), _p(h_n), _p(c_n),
                                      _p(reserve), _p(work), n_threads)
            elif c == 2:
                rc = gru_forward_f64(T, B, I, H, _p(x), _p(h0), _p(w_ih), _p(w_hh), _p(b_ih),
                                     _p(b_hh), bs, _p(y), _p(h_n), _p(reserve), _p(work),
                                     n_threads)
            else:
                rc = rnn_forward_f64(T, B, I, H, _p(x), _p(h0), _p(w_ih), _p(w_hh), _p(b_ih),
                                     _p(b_hh), bs, _p(y), _p(h_n), _p(reserve), _p(work),
                                     use_relu, n_threads)
    return rc


def backward(str cell, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
             floating[::1] x, floating[::1] h0, floating[::1] c0, floating[::1] w_ih,
             floating[::1] w_hh, int[::1] batch_sizes, floating[::1] y, floating[::1] reserve,
             floating[::1] dy, floating[::1] dh_n, floating[::1] dc_n, floating[::1] dx,
             floating[::1] dh0, floating[::1] dc0, floating[::1] dw_ih, floating[::1] dw_hh,
             floating[::1] db_ih, floating[::1] db_hh, floating[::1] work,
             bint use_relu=False, int n_threads=1):
    """One backward through the C API, without the GIL; returns its status code."""
    cdef const int* bs = NULL if batch_sizes is None else &batch_sizes[0]
    cdef int rc, c = _cell(cell)
    with nogil:
        if floating is float:
            if c == 1:
                rc = lstm_backward_f32(T, B, I, H, _p(x), _p(h0), _p(c0), _p(w_ih), _p(w_hh),
                                       bs, _p(y), _p(reserve), _p(dy), _p(dh_n), _p(dc_n),
                                       _p(dx), _p(dh0), _p(dc0), _p(dw_ih), _p(dw_hh),
                                       _p(db_ih), _p(db_hh), _p(work), n_threads)
            elif c == 2:
                rc = gru_backward_f32(T, B, I, H, _p(x), _p(h0), _p(w_ih), _p(w_hh), bs, _p(y),
                                      _p(reserve), _p(dy), _p(dh_n), _p(dx), _p(dh0),
                                      _p(dw_ih), _p(dw_hh), _p(db_ih), _p(db_hh), _p(work),
                                      n_threads)
            else:
                rc = rnn_backward_f32(T, B, I, H, _p(x), _p(h0), _p(w_ih), _p(w_hh), bs, _p(y),
                                      _p(reserve), _p(dy), _p(dh_n), _p(dx), _p(dh0),
                                      _p(dw_ih), _p(dw_hh), _p(db_ih), _p(db_hh), _p(work),
                                      use_relu, n_threads)
        else:
            if c == 1:
                rc = lstm_backward_f64(T, B, I, H, _p(x), _p(h0), _p(c0), _p(w_ih), _p(w_hh),
                                       bs, _p(y), _p(reserve), _p(dy), _p(dh_n), _p(dc_n),
                                       _p(dx), _p(dh0), _p(dc0), _p(dw_ih), _p(dw_hh),
                                       _p(db_ih), _p(db_hh), _p(work), n_threads)
            elif c == 2:
                rc = gru_backward_f64(T, B, I, H, _p(x), _p(h0), _p(w_ih), _p(w_hh), bs, _p(y),
                                      _p(reserve), _p(dy), _p(dh_n), _p(dx), _p(dh0),
                                      _p(dw_ih), _p(dw_hh), _p(db_ih), _p(db_hh), _p(work),
                                      n_threads)
            else:
                rc = rnn_backward_f64(T, B, I, H, _p(x), _p(h0), _p(w_ih), _p(w_hh), bs, _p(y),
                                      _p(reserve), _p(dy), _p(dh_n), _p(dx), _p(dh0),
                                      _p(dw_ih), _p(dw_hh), _p(db_ih), _p(db_hh), _p(work),
                                      use_relu, n_threads)
    return rc
