# Stable C-level API of fastrnn's Elman RNN kernels, for other Cython extensions:
#
#     from fastrnn.capi.rnn cimport rnn_forward_f32, rnn_backward_f32, rnn_reserve_size, \
#         rnn_workspace_size
#
# Semantics are fastrnn.functional.rnn_forward / rnn_backward's (PyTorch's Elman RNN,
# h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh, or relu when use_relu is true) for
# one layer and one direction, on C-contiguous row-major buffers and without the Python layer.
# Shapes: x (T, B, I), h0/h_n (B, H), w_ih (H, I), w_hh (H, H), b_ih/b_hh (H,), y (T, B, H).
# The conventions (batch_sizes, NULL operands, reserve, workspace, threads, return codes,
# stability) are those written in fastrnn/capi/lstm.pxd; rnn_reserve_size is 0 today (the
# backward reads y), and reserve may then be NULL.

cdef Py_ssize_t rnn_reserve_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                 Py_ssize_t H) noexcept nogil
cdef Py_ssize_t rnn_workspace_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                   Py_ssize_t H) noexcept nogil

cdef int rnn_forward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const float* x, const float* h0, const float* w_ih, const float* w_hh,
                         const float* b_ih, const float* b_hh, const int* batch_sizes,
                         float* y, float* h_n, float* reserve, float* workspace,
                         bint use_relu, int n_threads) noexcept nogil
cdef int rnn_forward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const double* x, const double* h0, const double* w_ih,
                         const double* w_hh, const double* b_ih, const double* b_hh,
                         const int* batch_sizes, double* y, double* h_n, double* reserve,
                         double* workspace, bint use_relu, int n_threads) noexcept nogil

cdef int rnn_backward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const float* x, const float* h0, const float* w_ih, const float* w_hh,
                          const int* batch_sizes, const float* y, const float* reserve,
                          const float* dy, const float* dh_n,
                          float* dx, float* dh0, float* dw_ih, float* dw_hh,
                          float* db_ih, float* db_hh, float* workspace,
                          bint use_relu, int n_threads) noexcept nogil
cdef int rnn_backward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const double* x, const double* h0, const double* w_ih,
                          const double* w_hh, const int* batch_sizes, const double* y,
                          const double* reserve, const double* dy, const double* dh_n,
                          double* dx, double* dh0, double* dw_ih, double* dw_hh,
                          double* db_ih, double* db_hh, double* workspace,
                          bint use_relu, int n_threads) noexcept nogil
