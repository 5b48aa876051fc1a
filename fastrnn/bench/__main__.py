"""``python -m fastrnn.bench``: time fastrnn, the NumPy reference and PyTorch side by side.

Examples::

    python -m fastrnn.bench --quick                       # < 1 minute: small + medium
    python -m fastrnn.bench --threads 1,2 --json out.json  # every cell and standard shape
    python -m fastrnn.bench --cells lstm --configs large,64x8x32x32 --modes fwdbwd
    python -m fastrnn.bench --dtype float64 --configs medium --plot f64.png
    python -m fastrnn.bench --deepbench --threads 2       # DeepBench's problems vs torch
    python -m fastrnn.bench --deepbench inference --impls fastrnn,np-plain,torch
    python -m fastrnn.bench --variants                    # each cell option vs the plain cell
    python -m fastrnn.bench --inference                   # serving: packed, int8, step

fastrnn and PyTorch share one OpenMP runtime in the process and its OMP_WAIT_POLICY (the
environment's, else the runtime's default: neither library sets it), which the header of the
table reports.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from fastrnn.bench import (
    CELLS,
    CONFIGS,
    DEEPBENCH,
    DEEPBENCH_MAX_STEPS,
    IMPLS,
    MODES,
    environment,
    format_table,
    parse_config,
    run,
    run_deepbench,
    summarize,
    torch_or_none,
    write_json,
    write_plot,
)

# Least seconds per timed sample. 20 ms samples let a 2-vCPU VM's wake-up after each settle pause
# dominate kernels with short steps (medium RNN, 2 threads: median 16.7 ms, min 3.7); samples of
# 0.1 s or more amortise it.
MIN_TIME = 0.1
QUICK = {"configs": "small,medium", "repeats": 3, "min_time": 0.005, "gemm_n": 768, "settle": 0.1}


def _csv(choices=None):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if choices is not None:
            bad = [t for t in items if t not in choices]
            if bad:
                raise argparse.ArgumentTypeError(
                    f"unknown {', '.join(bad)}: choose from {', '.join(choices)}"
                )
        return items

    return parse


def _threads(text: str) -> list[int]:
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("threads: comma-separated positive integers") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("threads: comma-separated positive integers")
    return out


def _configs(text: str) -> list[str]:
    items = _csv()(text)
    for c in items:
        try:
            parse_config(c)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastrnn.bench",
        description="Time fastrnn against the NumPy reference and PyTorch on identical inputs "
        "(interleaved runs; median and min times; GFLOP/s against the measured GEMM peak).",
    )
    p.add_argument("--cells", type=_csv(CELLS), default=list(CELLS), help="lstm,gru,rnn")
    p.add_argument(
        "--configs",
        type=_configs,
        default=None,
        help=f"comma-separated names ({', '.join(f'{k}={v}' for k, v in CONFIGS.items())}) "
        "or TxBxIxH shapes (default: all names)",
    )
    p.add_argument("--modes", type=_csv(MODES), default=list(MODES), help="fwd,fwdbwd")
    p.add_argument(
        "--impls",
        type=_csv(IMPLS),
        default=None,
        help=f"{','.join(IMPLS)} (numpy: fastrnn.reference; np-plain: a plain NumPy loop with "
        "preallocated buffers; default: all, fastrnn,torch with --deepbench)",
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help="thread count(s), e.g. 2 or 1,2 (default: fastrnn.get_num_threads())",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed samples per implementation")
    p.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="least seconds per sample (default 0.1; 0.005 with --quick); raise it on a busy or "
        "virtual machine, where short samples catch the wake-up after each pause",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        help="pause before each sample so BLAS pools spinning after the previous one sleep "
        "(default 0.2 s; 0.1 s with --quick)",
    )
    p.add_argument("--gemm-n", type=int, default=None, help="size of the GEMM-peak probe")
    p.add_argument(
        "--deepbench",
        nargs="?",
        const="all",
        choices=(*DEEPBENCH, "all"),
        help="time DeepBench's RNN problems (training: forward + backward; inference: forward; "
        "input size = hidden size) instead of --cells/--configs/--modes",
    )
    p.add_argument(
        "--deepbench-steps",
        type=int,
        default=DEEPBENCH_MAX_STEPS,
        help=f"cap on a DeepBench problem's T (default {DEEPBENCH_MAX_STEPS}; 0: DeepBench's own)",
    )
    p.add_argument("--quick", action="store_true", help="small + medium, few repeats (< 1 min)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG bar chart (needs matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--inference" in argv:  # its own options: fastrnn.bench.inference
        from fastrnn.bench import inference

        return inference.main([a for a in argv if a != "--inference"])
    if "--variants" in argv:  # its own options: fastrnn.bench.variants
        from fastrnn.bench import variants

        return variants.main([a for a in argv if a != "--variants"])
    args = build_parser().parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "fastrnn.bench: --plot needs matplotlib, which is not installed "
                "(pip install matplotlib, or pip install 'fastrnn[plot]').",
                file=sys.stderr,
            )
            return 2
    if args.impls is None:
        args.impls = ["fastrnn", "torch"] if args.deepbench else list(IMPLS)
    if "torch" in args.impls:
        torch_or_none()  # load torch (and its OpenMP runtime) before fastrnn's kernels
    import fastrnn
    import fastrnn.functional  # noqa: F401

    quick = QUICK if args.quick else {}
    configs = args.configs or _csv()(quick.get("configs", ",".join(CONFIGS)))
    repeats = args.repeats or quick.get("repeats", 7)
    min_time = args.min_time or quick.get("min_time", MIN_TIME)
    settle = args.settle if args.settle is not None else quick.get("settle", 0.2)
    gemm_n = args.gemm_n or quick.get("gemm_n", 1536)
    threads = args.threads or [fastrnn.get_num_threads()]
    dtype = np.dtype(args.dtype)

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"... {msg}", file=sys.stderr, flush=True)

    if args.deepbench:
        sets = tuple(DEEPBENCH) if args.deepbench == "all" else (args.deepbench,)
        rows, peaks = run_deepbench(
            sets,
            args.impls,
            dtype,
            threads,
            repeats=args.repeats or 5,
            min_time=min_time,
            settle=settle,
            gemm_n=gemm_n,
            max_steps=args.deepbench_steps,
            progress=progress,
        )
        return _report(args, rows, peaks, dtype)
    rows, peaks = run(
        args.cells,
        configs,
        args.modes,
        args.impls,
        dtype,
        threads,
        repeats=repeats,
        min_time=min_time,
        settle=settle,
        gemm_n=gemm_n,
        progress=progress,
    )
    return _report(args, rows, peaks, dtype)


def _report(args, rows, peaks, dtype) -> int:
    env = environment(peaks, dtype)
    print(format_table(rows, peaks, env))
    print(summarize(rows))
    if args.json:
        write_json(args.json, rows, peaks, env)
    if args.plot:
        write_plot(args.plot, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
