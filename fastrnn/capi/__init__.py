"""The stable C API of fastrnn's kernels, for other Cython extensions to ``cimport``.

    from fastrnn.capi.lstm cimport lstm_forward_f32, lstm_backward_f32, lstm_reserve_size, \\
        lstm_workspace_size

``fastrnn/capi/{rnn,lstm,gru}.pxd`` declare the functions and state their contract (see
docs/functional_api.md); the compiled kernels ``fastrnn._kernels.<cell>`` implement them, and
each ``fastrnn.capi.<cell>`` module hands their C functions (``__pyx_capi__``) to the extensions
that cimport it. The kernels' own ``.pxd`` files include these, so the declarations are written
once.
"""
