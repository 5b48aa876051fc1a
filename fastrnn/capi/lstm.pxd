# Stable C-level API of fastrnn's LSTM kernels, for other Cython extensions:
#
#     from fastrnn.capi.lstm cimport lstm_forward_f32, lstm_backward_f32, lstm_reserve_size, \
#         lstm_workspace_size
#
# Semantics are fastrnn.functional.lstm_forward / lstm_backward's (PyTorch's LSTM, gates i, f, g,
# o) for one layer and one direction, on C-contiguous row-major buffers and without the Python
# layer: no sorting of rows by length, no time reversal, no projection. Shapes: x (T, B, I),
# h0/c0/h_n/c_n (B, H), w_ih (4H, I), w_hh (4H, H), b_ih/b_hh (4H,), y (T, B, H).
#
# * batch_sizes: NULL when every sequence has length T; else batch_sizes[t] is the number of
#   sequences still running at step t (PyTorch's PackedSequence.batch_sizes): rows sorted by
#   decreasing length, batch_sizes[0] == B, non-increasing, >= 1. Outputs past a row's length
#   are zero; h_n/c_n are taken at each row's last step.
# * h0, c0, b_ih and b_hh may be NULL (zeros; biases both or neither); so may dh_n and dc_n
#   (zeros) and db_ih, db_hh (not wanted).
# * reserve: lstm_reserve_size(T, B, I, H) elements written by a training forward and read by
#   the backward; pass NULL for an inference forward, which keeps nothing.
# * workspace: lstm_workspace_size(T, B, I, H) elements of scratch for either call; its content
#   need not survive between calls.
# * The backward also reads x, h0, c0, the weights, batch_sizes and y of the forward: pass the
#   same, unmodified. It writes (does not accumulate) dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh;
#   db_ih == db_hh for an LSTM.
# * n_threads (>= 1) threads for the kernels' parallel region. The GEMMs run on the kernels'
#   own micro-kernels inside it (SciPy's BLAS, called by each thread on its share, only on a
#   CPU without AVX2 or when a packed copy cannot be allocated: keep that BLAS single-threaded,
#   e.g. with threadpoolctl). The functions take and release no GIL. Besides reserve and
#   workspace, each call allocates (and frees before it returns) one packed copy of the
#   recurrent and input weights per thread, about (G*H + G*I) elements in all; without the
#   memory for it the call falls back to BLAS.
# * Return 0, or -1 for a size out of range or a required NULL pointer, -2 for invalid
#   batch_sizes; nothing is written on error.
# * Stable: these signatures and semantics keep working across fastrnn releases; the sizes are
#   functions so that kernels may change what they keep.

cdef Py_ssize_t lstm_reserve_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                  Py_ssize_t H) noexcept nogil
cdef Py_ssize_t lstm_workspace_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                    Py_ssize_t H) noexcept nogil

cdef int lstm_forward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const float* x, const float* h0, const float* c0,
                          const float* w_ih, const float* w_hh,
                          const float* b_ih, const float* b_hh, const int* batch_sizes,
                          float* y, float* h_n, float* c_n,
                          float* reserve, float* workspace, int n_threads) noexcept nogil
cdef int lstm_forward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const double* x, const double* h0, const double* c0,
                          const double* w_ih, const double* w_hh,
                          const double* b_ih, const double* b_hh, const int* batch_sizes,
                          double* y, double* h_n, double* c_n,
                          double* reserve, double* workspace, int n_threads) noexcept nogil

cdef int lstm_backward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                           const float* x, const float* h0, const float* c0,
                           const float* w_ih, const float* w_hh, const int* batch_sizes,
                           const float* y, const float* reserve,
                           const float* dy, const float* dh_n, const float* dc_n,
                           float* dx, float* dh0, float* dc0, float* dw_ih, float* dw_hh,
                           float* db_ih, float* db_hh,
                           float* workspace, int n_threads) noexcept nogil
cdef int lstm_backward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                           const double* x, const double* h0, const double* c0,
                           const double* w_ih, const double* w_hh, const int* batch_sizes,
                           const double* y, const double* reserve,
                           const double* dy, const double* dh_n, const double* dc_n,
                           double* dx, double* dh0, double* dc0, double* dw_ih, double* dw_hh,
                           double* db_ih, double* db_hh,
                           double* workspace, int n_threads) noexcept nogil
