# The stable C API's forward and backward, written once for every cell: included at the end of
# rnn.pyx, lstm.pyx and gru.pyx (tier 4), after the cell defines
#
#     Ops                  its operand struct (ctypedef of RNNOps, LSTMOps or GRUOps)
#     _layout(T, B, I, H)  its workspace and reserve layout (_capi.Layout): every offset
#     _bind_forward(o, L, b_ih, b_hh, reserve, work)  -> 0 or ERR_ARG: checks the cell's own
#                          required pointers, then points the struct at the workspace and
#                          reserve (zeros for NULL states, folded biases, training or not)
#     _bind_backward(o, L, dc_n, reserve, work)       -> 0 or ERR_ARG: the same for a backward
#     _pass_states(o, tag) the final states of an empty (T == 0 or B == 0) forward
#
# and its time loops _forward_part / _backward_part. The public *_f32 / *_f64 functions of the
# cell fill an Ops from their arguments and call _c_forward / _c_backward.

from _capi cimport (ERR_ARG, Layout, check_sizes, copy_if, copy_or_zero, int_slots, or_zeros,
                    schedule)


cdef int _c_forward(Ops* o, const floating* b_ih, const floating* b_hh, floating* reserve,
                    floating* work, int n_threads) noexcept nogil:
    """Check the operands, bind the workspace, run the forward; 0 or an error code."""
    cdef Layout L = _layout(o.T, o.B, o.I, o.H)
    cdef int rc = check_sizes(o.T, o.B, o.I, o.H, n_threads)
    if rc == 0 and (o.x == NULL or o.w_ih == NULL or o.w_hh == NULL or o.y == NULL
                    or o.h_n == NULL or work == NULL or (b_ih == NULL) != (b_hh == NULL)):
        rc = ERR_ARG
    if rc == 0:
        rc = schedule(o.batch_sizes, o.T, o.B, work, &o.batch_sizes)
    if rc == 0:
        rc = _bind_forward(o, &L, b_ih, b_hh, reserve, work)
    if rc != 0:
        return rc
    if o.T == 0 or o.B == 0:
        _pass_states(o, work)
    else:
        run_team(_forward_part[floating], o, o.H, n_threads)
    return 0


cdef int _c_backward(Ops* o, const floating* dh_n, const floating* dc_n,
                     const floating* reserve, floating* db_ih, floating* db_hh, floating* work,
                     int n_threads) noexcept nogil:
    """Check the operands, bind the workspace, run the BPTT; 0 or an error code.

    dh_n (and the LSTM's dc_n) may be NULL for zeros; db_ih, db_hh NULL when not wanted.
    """
    cdef Layout L = _layout(o.T, o.B, o.I, o.H)
    cdef int rc = check_sizes(o.T, o.B, o.I, o.H, n_threads)
    if rc == 0 and (o.x == NULL or o.w_ih == NULL or o.w_hh == NULL or o.y == NULL
                    or (reserve == NULL and L.reserve > 0) or o.dy == NULL or o.dx == NULL
                    or o.dh == NULL or o.dw_ih == NULL or o.dw_hh == NULL or work == NULL):
        rc = ERR_ARG
    if rc == 0:
        rc = schedule(o.batch_sizes, o.T, o.B, work, &o.batch_sizes)
    if rc == 0:
        rc = _bind_backward(o, &L, dc_n, reserve, work)
    if rc != 0:
        return rc
    copy_or_zero(<floating*> o.dh, dh_n, o.B * o.H)  # the kernel carries dh back in place
    if o.T == 0 or o.B == 0:
        memset(o.dw_ih, 0, L.G * o.I * sizeof(floating))
        memset(o.dw_hh, 0, L.G * o.H * sizeof(floating))
        memset(work + L.vec, 0, L.G * sizeof(floating))
        memset(work + L.vec_hh, 0, L.G * sizeof(floating))
    else:
        run_team(_backward_part[floating], o, o.H, n_threads)
    copy_if(db_ih, work + L.vec, L.G)
    copy_if(db_hh, work + L.vec_hh, L.G)
    return 0
