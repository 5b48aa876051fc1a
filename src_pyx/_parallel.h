/* The team helpers of the kernels' persistent parallel regions.
 *
 * Each kernel runs its whole time loop inside one OpenMP parallel region (opened by run_team,
 * _parallel.pxd). Every thread owns a contiguous slice of hidden units (and the matching gate
 * columns) and runs its share of each GEMM on the kernels' own micro-kernels (_rgemm.h; BLAS,
 * single-threaded, only where those cannot run), so the only synchronisation per time step is
 * one barrier (two for the LSTM projection and the reset-before GRU).
 *
 * That barrier is ours, not `#pragma omp barrier`: libgomp's barrier spins or sleeps according
 * to OMP_WAIT_POLICY, and the policy that makes a per-step barrier cheap (active) is the one
 * that makes idle OpenMP threads burn CPU between kernel calls. fr_barrier_wait spins briefly
 * (a step's work on the other threads usually ends within microseconds) and then yields the
 * CPU, so it stays cheap on an idle machine and polite on a loaded one.
 *
 * Without OpenMP (FASTRNN_NO_OPENMP=1, or a compiler that failed the probe) the team has one
 * thread and the barrier returns at once.
 */
#ifndef FASTRNN_PARALLEL_H
#define FASTRNN_PARALLEL_H

#include <sched.h>

#ifdef _OPENMP
#include <omp.h>
static inline int fr_team_size(void) { return omp_get_num_threads(); }
static inline int fr_team_rank(void) { return omp_get_thread_num(); }
#else
static inline int fr_team_size(void) { return 1; }
static inline int fr_team_rank(void) { return 0; }
#endif

#if defined(__x86_64__) || defined(__i386__)
#define FR_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define FR_PAUSE() __asm__ __volatile__("yield")
#else
#define FR_PAUSE() ((void) 0)
#endif

/* Spins before the first sched_yield: ~ 10-50 microseconds on current x86, longer than a
 * step's usual imbalance between threads, shorter than a scheduler time slice. */
#define FR_SPINS 4000

typedef struct {
    int count;  /* threads arrived in the current phase */
    int phase;  /* bumped by the last thread to arrive */
    char pad[56];
} fr_barrier;

static inline void fr_barrier_init(fr_barrier *b)
{
    b->count = 0;
    b->phase = 0;
}

/* A central counting barrier for n threads (acquire/release: writes before it are visible
 * after it). */
static inline void fr_barrier_wait(fr_barrier *b, int n)
{
    int phase, spins = 0;
    if (n <= 1)
        return;
    phase = __atomic_load_n(&b->phase, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == n) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->phase, phase + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&b->phase, __ATOMIC_ACQUIRE) == phase) {
        if (spins < FR_SPINS) {
            FR_PAUSE();
            spins++;
        } else {
            sched_yield();
        }
    }
}

#endif
