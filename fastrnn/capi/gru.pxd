# Stable C-level API of fastrnn's GRU kernels, for other Cython extensions:
#
#     from fastrnn.capi.gru cimport gru_forward_f32, gru_backward_f32, gru_reserve_size, \
#         gru_workspace_size
#
# Semantics are fastrnn.functional.gru_forward / gru_backward's (PyTorch's GRU, gates r, z, n,
# the reset gate applied after the hidden matmul) for one layer and one direction, on
# C-contiguous row-major buffers and without the Python layer (reset_after=False is not part of
# the C API). Shapes: x (T, B, I), h0/h_n (B, H), w_ih (3H, I), w_hh (3H, H), b_ih/b_hh (3H,),
# y (T, B, H). The conventions (batch_sizes, NULL operands, reserve, workspace, threads, return
# codes, stability) are those written in fastrnn/capi/lstm.pxd.

cdef Py_ssize_t gru_reserve_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                 Py_ssize_t H) noexcept nogil
cdef Py_ssize_t gru_workspace_size(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                                   Py_ssize_t H) noexcept nogil

cdef int gru_forward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const float* x, const float* h0, const float* w_ih, const float* w_hh,
                         const float* b_ih, const float* b_hh, const int* batch_sizes,
                         float* y, float* h_n, float* reserve, float* workspace,
                         int n_threads) noexcept nogil
cdef int gru_forward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                         const double* x, const double* h0, const double* w_ih,
                         const double* w_hh, const double* b_ih, const double* b_hh,
                         const int* batch_sizes, double* y, double* h_n, double* reserve,
                         double* workspace, int n_threads) noexcept nogil

cdef int gru_backward_f32(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const float* x, const float* h0, const float* w_ih, const float* w_hh,
                          const int* batch_sizes, const float* y, const float* reserve,
                          const float* dy, const float* dh_n,
                          float* dx, float* dh0, float* dw_ih, float* dw_hh,
                          float* db_ih, float* db_hh, float* workspace,
                          int n_threads) noexcept nogil
cdef int gru_backward_f64(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                          const double* x, const double* h0, const double* w_ih,
                          const double* w_hh, const int* batch_sizes, const double* y,
                          const double* reserve, const double* dy, const double* dh_n,
                          double* dx, double* dh0, double* dw_ih, double* dw_hh,
                          double* db_ih, double* db_hh, double* workspace,
                          int n_threads) noexcept nogil
