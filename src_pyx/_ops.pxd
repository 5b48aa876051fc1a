# The operand structs of the cell kernels, one per cell, header-only.
#
# A kernel's time loop (the `_*_part` functions of rnn.pyx, lstm.pyx, gru.pyx) takes a pointer to
# its cell's struct instead of a long argument list; the Python entry points (tier 3) and the C
# API (tier 4) fill one and hand it to _parallel.run_team. Legend as in the cells: T steps, B
# batch rows, I input size, H hidden size, P projection size, G gate width.
#
# Why void*: Cython cannot put a fused type (floating) in a struct, and one struct per dtype
# would need its field list written twice. The pointers are void*, and each time loop casts
# each one it uses exactly once, at its top (`cdef const floating* x = <const floating*> op.x`),
# where `floating` is the element type of the call (selected by run_team's `tag`). So a field
# is typed in one place per loop, and the loop bodies read like functions of typed arguments.
#
# Each cell fills its struct through one `_ops(...)` (the operands every call takes; it zeroes
# the struct first, so every other field is NULL or 0 until set), used by its Python entry
# points and its C API alike. Buffers are C-contiguous, row-major, with the shapes given beside
# each field.
#
# How to add an optional per-cell extension (a peephole weight, layer-norm gains, a dropout or
# zoneout mask, every step's cell state, ...):
#   1. Add ONE field here, NULL (or 0) meaning "off", with its shape in a comment, e.g.
#          const void* wp      # (3, H) peephole weights of i, f, o; NULL: no peephole
#   2. Set it in the tier-3 `def` entry point that takes the new array (a new argument with a
#      None default, or a new entry point), and, should the C API ever take it, in the cell's
#      tier-4 wrappers (a new workspace buffer: a new slot in the cell's _layout and a line in
#      its _bind_forward / _bind_backward).
#   3. In the time loop, cast it once at the top with the others and branch on NULL outside
#      the per-row loop (once per step or once per call, never per element), passing the typed
#      pointer to the row function that needs it.
# No signature of a loop, of run_team or of the C API changes, and every other caller keeps
# working with the field NULL.

cdef struct RNNOps:
    Py_ssize_t T, B, H
    Py_ssize_t I "I_"       # C name: complex.h defines I
    const int* batch_sizes  # (T,) rows active at each step, non-increasing
    bint use_relu           # relu instead of tanh
    const void* prepacked   # a Prepacked (_prepack.pxd) of W_ih, W_hh; NULL: pack per call
    bint training           # keep what BPTT needs of the options (hds of every step, acts)
    # forward
    const void* x           # (T, B, I)
    const void* h0          # (B, H)
    const void* w_ih        # (H, I)
    const void* w_hh        # (H, H)
    const void* bias        # (H,) b_ih + b_hh
    void* y                 # (T, B, H) outputs, also what BPTT reads
    void* h_n               # (B, H)
    # backward
    const void* dy          # (T, B, H)
    void* dh                # (B, H) dh_n in, dh0 out
    void* dgates            # (T, B, H) workspace
    void* dx                # (T, B, I)
    void* dw_ih             # (H, I)
    void* dw_hh             # (H, H)
    void* db                # (H,) gradient of b_ih (and of b_hh)
    # recurrent dropout and zoneout of h (NULL / 0: off), as the GRU's
    const void* rmask       # (B, H) dropout mask on h_{t-1} before the W_hh GEMM, every step
    void* hds               # (T, B, H) h_{t-1} * rmask of each step ((2, B, H) in inference)
    void* dhd               # (B, H) backward workspace with rmask: da_t W_hh
    const void* zoneout     # (T, B, H) zoneout weights of h (1: keep h_{t-1}); NULL: zoneout_p
    double zoneout_p        # every unit's weight when zoneout is NULL (eval: p itself); 0: off
    void* acts              # (T, B, H) act(...) before zoneout, what BPTT reads (training)


cdef struct LSTMOps:
    Py_ssize_t T, B, H
    Py_ssize_t I "I_"       # C name: complex.h defines I
    Py_ssize_t P            # projection size; 0 without a projection
    const int* batch_sizes  # (T,)
    bint training           # keep what BPTT needs (else: a ring of gates, one cell state)
    const void* prepacked   # a Prepacked (_prepack.pxd) of W_ih, W_hh; NULL: pack per call
    # forward
    const void* x           # (T, B, I)
    const void* h0          # (B, H), or (B, P) with a projection
    const void* c0          # (B, H)
    const void* w_ih        # (4H, I)
    const void* w_hh        # (4H, H), or (4H, P)
    const void* w_hr        # (P, H) projection; NULL without
    const void* bias        # (4H,) b_ih + b_hh
    void* gates             # (T, B, 4H) activated gates i, f, g, o (inference: a ring)
    void* y                 # (T, B, H), or (T, B, P)
    void* cs                # (T, B, H) cell states ((1, B, H) in inference)
    void* ms                # (T, B, H) o * tanh(c) before the projection ((1, B, H) in inference)
    void* h_n               # (B, H), or (B, P)
    void* c_n               # (B, H)
    # backward
    const void* dy          # (T, B, H), or (T, B, P)
    void* dh                # (B, H) or (B, P): dh_n in, dh0 out
    void* dc                # (B, H): dc_n in, dc0 out
    void* dgates            # (T, B, 4H) workspace
    void* dhs               # (T, B, P) workspace of the projection
    void* dm                # (B, H) workspace of the projection
    void* dx                # (T, B, I)
    void* dw_ih             # (4H, I)
    void* dw_hh             # (4H, H), or (4H, P)
    void* dw_hr             # (P, H)
    void* db                # (4H,) gradient of b_ih (and of b_hh)
    # optional extensions of the cell without a projection (NULL / 0: off)
    const void* w_peephole  # (3, H) peephole weights of i, f (on c_{t-1}) and o (on c_t)
    const void* rmask       # (B, H) recurrent dropout: h_{t-1} * rmask enters the W_hh GEMM
    void* hds               # (T, B, H) h_{t-1} * rmask of every step ((2, B, H) in inference)
    const void* zoneout_h   # (T, B, H) weight of h_{t-1} in h_t (1: keep it), steps zh_step apart
    const void* zoneout_c   # (T, B, H) weight of c_{t-1} in c_t, steps zc_step apart
    Py_ssize_t zh_step      # B * H, or 0: one (B, H) weight for every step (eval's p)
    Py_ssize_t zc_step
    void* cnew              # (T, B, H) c_t before zoneout, with zoneout_c ((1, B, H) in inference)
    bint cell_states        # cs keeps all T steps, zero on inactive rows (return_cell_states)
    const void* dcs         # (T, B, H) gradient of the cell states cs; NULL: zeros
    void* dw_peephole       # (3, H) gradient of w_peephole
    # layer normalization (lstm.pyx's _forward_ln_part / _backward_ln_part); ln_ih NULL: off
    double ln_eps           # the epsilon of every layer norm
    const void* ln_ih       # (4H,) gain of LN(W_ih x)
    const void* ln_hh       # (4H,) gain of LN(W_hh h)
    const void* ln_c        # (H,) gain of LN(c)
    const void* ln_c_bias   # (H,) bias of LN(c)
    void* xs                # (T, B, 4H) normalized W_ih x (inference: a ring like gates)
    void* hs                # (T, B, 4H) normalized W_hh h ((1, B, 4H) in inference)
    void* cn                # (T, B, H) normalized c_t (training only)
    void* rstd              # (T, B, 3) 1/sqrt(var + eps) of the rows of xs, hs, cn (training)
    void* dgx               # (T, B, 4H) workspace: gradient of W_ih x
    void* dgh               # (T, B, 4H) workspace: gradient of W_hh h
    void* ln_acc            # ln_workspace(B, H): each row block's gradient sums (_layernorm)
    void* dln_ih            # (4H,)
    void* dln_hh            # (4H,)
    void* dln_c             # (H,)
    void* dln_c_bias        # (H,)


cdef struct GRUOps:
    Py_ssize_t T, B, H
    Py_ssize_t I "I_"       # C name: complex.h defines I
    const int* batch_sizes  # (T,)
    bint training           # keep what BPTT needs
    const void* prepacked   # a Prepacked (_prepack.pxd) of W_ih, W_hh; NULL: pack per call
    # forward (reset after the hidden matmul: bias = b_ih + [b_hr, b_hz, 0] and b_hn apart;
    # reset before: bias = b_ih + b_hh and b_hn NULL)
    const void* x           # (T, B, I)
    const void* h0          # (B, H)
    const void* w_ih        # (3H, I)
    const void* w_hh        # (3H, H)
    const void* bias        # (3H,)
    const void* b_hn        # (H,)
    void* gates             # (T, B, 3H) activated gates r, z, n (inference: a ring)
    void* hns               # (T, B, H) W_hn h + b_hn ((1, B, H) in inference)
    void* rhs               # (T, B, H) r * h_{t-1}, reset-before only ((1, B, H) in inference)
    void* hw                # (B, 3H) workspace
    void* y                 # (T, B, H)
    void* h_n               # (B, H)
    # backward
    const void* dy          # (T, B, H)
    void* dh                # (B, H) dh_n in, dh0 out
    void* dgi               # (T, B, 3H) workspace (reset before: the one gate-gradient buffer)
    void* dgh               # (T, B, 3H) workspace (reset after only)
    void* drh               # (B, H) workspace (reset before only)
    void* dx                # (T, B, I)
    void* dw_ih             # (3H, I)
    void* dw_hh             # (3H, H)
    void* db_ih             # (3H,) (reset before: the one bias gradient, db_ih == db_hh)
    void* db_hh             # (3H,) (reset after only)
    # recurrent dropout and zoneout of h (reset after only; NULL / 0: off)
    const void* rmask       # (B, H) dropout mask on h_{t-1} before the W_hh GEMM, every step
    void* hds               # (T, B, H) h_{t-1} * rmask of each step ((2, B, H) in inference)
    void* dhd               # (B, H) backward workspace with rmask: dgh_t W_hh
    const void* zoneout     # (T, B, H) zoneout weights of h (1: keep h_{t-1}); NULL: zoneout_p
    double zoneout_p        # every unit's weight when zoneout is NULL (eval: p itself); 0: off
    # layer normalization (gru.pyx's _forward_ln_part / _backward_ln_part); ln_ih NULL: off.
    # With it, bias is b_ih (3H,), bias_hh is b_hh (3H,) and b_hn is unused.
    double ln_eps           # the epsilon of both layer norms
    const void* ln_ih       # (3H,) gain of LN(W_ih x)
    const void* ln_hh       # (3H,) gain of LN(W_hh h)
    const void* bias_hh     # (3H,) b_hh
    void* xs                # (T, B, 3H) normalized W_ih x (inference: a ring like gates)
    void* hs                # (T, B, 3H) normalized W_hh h ((1, B, 3H) in inference)
    void* rstd              # (T, B, 2) 1/sqrt(var + eps) of the rows of xs, hs (training)
    void* dgx               # (T, B, 3H) workspace: gradient of W_ih x
    void* dghh              # (T, B, 3H) workspace: gradient of W_hh h
    void* ln_acc            # ln_workspace(B, H): each row block's gradient sums (_layernorm)
    void* dln_ih            # (3H,)
    void* dln_hh            # (3H,)
