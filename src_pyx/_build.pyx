"""How the kernels were compiled, read from the C preprocessor of this very build.

``CONFIG`` lets a test assert that it runs the build it expects (tests/test_debug_build.py):
every extension of a build gets the same flags from setup.py.
"""

cdef extern from *:
    """
    #if defined(__SANITIZE_ADDRESS__)
    #define FASTRNN_ASAN 1
    #elif defined(__has_feature)
    #if __has_feature(address_sanitizer)
    #define FASTRNN_ASAN 1
    #endif
    #endif
    #ifndef FASTRNN_ASAN
    #define FASTRNN_ASAN 0
    #endif
    #ifdef _OPENMP
    #define FASTRNN_OPENMP 1
    #else
    #define FASTRNN_OPENMP 0
    #endif
    #ifdef __OPTIMIZE__
    #define FASTRNN_OPTIMIZED 1
    #else
    #define FASTRNN_OPTIMIZED 0
    #endif
    #ifndef FASTRNN_CYTHON_DEBUG
    #define FASTRNN_CYTHON_DEBUG 0
    #endif
    """
    const int FASTRNN_ASAN
    const int FASTRNN_OPENMP
    const int FASTRNN_OPTIMIZED
    const int FASTRNN_CYTHON_DEBUG


#: ``cython_debug``: bounds, wraparound and initialization checks (FASTRNN_DEBUG_CYTHON=1);
#: ``asan``: compiled with AddressSanitizer (FASTRNN_SANITIZE=address); ``openmp``: the gate
#: passes can run on several threads; ``optimized``: compiled with -O1 or more.
CONFIG = {
    "cython_debug": bool(FASTRNN_CYTHON_DEBUG),
    "asan": bool(FASTRNN_ASAN),
    "openmp": bool(FASTRNN_OPENMP),
    "optimized": bool(FASTRNN_OPTIMIZED),
}
