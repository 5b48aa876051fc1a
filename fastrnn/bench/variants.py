"""``python -m fastrnn.bench --variants``: what each cell option costs against the plain cell.

The variants come from the cell registry (:mod:`fastrnn.cells`), not from a table here: for
each cell, its plain path; each option that has an :attr:`~fastrnn.cells.Option.example`, alone
(``lstm+peephole``); and the largest set of those options that combine (``lstm+all``: peephole,
recurrent dropout, zoneout and cell states). A new option with an example appears here without
an edit. Each variant is timed as a training forward (dropout and zoneout masks drawn from a
seeded generator, as a training step draws them) and as that forward plus the backward of a
dense ``dy``, all variants of a cell interleaved (A B C A B C ...), so that a change of the
machine's load reaches them alike. The ratios are of medians, against the plain cell of the
same run.

    python -m fastrnn.bench --variants                        # medium, float32, current threads
    python -m fastrnn.bench --variants --cells lstm --threads 1,2 --repeats 15
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from fastrnn.bench import CONFIGS, parse_config, time_interleaved
from fastrnn.bench.__main__ import _configs, _csv, _threads
from fastrnn.cells import CELLS, Cell
from fastrnn.stack import StackConfig, default_init, stack_backward, stack_forward

__all__ = ["format_table", "legend", "main", "run", "variants"]


def variants(cell: Cell, hidden_size: int) -> dict[str, dict[str, Any]]:
    """``{name: options}`` timed for ``cell``: plain, each option alone, the largest set that
    combines (when it has more than one option).

    Parameters
    ----------
    cell : Cell
    hidden_size : int
        For options whose example depends on it (``proj_size``).

    Returns
    -------
    dict
        Names such as ``"lstm"``, ``"lstm+peephole"``, ``"lstm+all"``, in that order.
    """
    examples = {o.name: o.example_for(hidden_size) for o in cell.options if o.example is not None}
    out: dict[str, dict[str, Any]] = {cell.name: {}}
    out.update({f"{cell.name}+{name}": {name: value} for name, value in examples.items()})
    for size in range(len(examples), 1, -1):
        for names in itertools.combinations(examples, size):
            options = {n: examples[n] for n in names}
            try:
                cell.check_options(options)
            except ValueError:
                continue  # a combination the cell refuses
            out[f"{cell.name}+all"] = options
            return out
    return out


def _calls(
    cell: Cell, options: dict[str, Any], shape: tuple[int, int, int, int], dtype: np.dtype
) -> dict[str, Callable[[], Any]]:
    T, B, I, H = shape
    cfg = StackConfig(cell.name, I, H, **options)
    rng = np.random.default_rng(0)
    w = default_init(cfg, dtype, rng)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, cfg.output_size)).astype(dtype)

    def fwd():
        return stack_forward(cfg, x, weights=w, generator=np.random.default_rng(1))[-1]

    def fwdbwd():
        return stack_backward(fwd(), dy)

    return {"fwd": fwd, "fwdbwd": fwdbwd}


def run(
    cells: list[str],
    configs: list[str],
    dtype: Any,
    threads: list[int],
    *,
    repeats: int,
    min_time: float,
    settle: float,
    progress: Callable[[str], None] = lambda msg: None,
) -> list[dict[str, Any]]:
    """One row per cell, shape, thread count, variant and mode: median and min seconds, and the
    ratio of the median to the plain cell's (same run)."""
    import fastrnn

    dtype = np.dtype(dtype)
    rows = []
    before = fastrnn.get_num_threads()
    try:
        for t in threads:
            fastrnn.set_num_threads(t)
            for name in cells:
                cell = CELLS[name]
                for config in configs:
                    shape = parse_config(config)
                    found = variants(cell, shape[3])
                    progress(f"{name} {config} {t} thread(s): {len(found)} variants")
                    fns = {
                        (variant, mode): fn
                        for variant, options in found.items()
                        for mode, fn in _calls(cell, options, shape, dtype).items()
                    }
                    times = time_interleaved(fns, repeats, min_time, settle)
                    for (variant, mode), ts in times.items():
                        med = statistics.median(ts)
                        rows.append(
                            {
                                "cell": name,
                                "config": config,
                                "threads": t,
                                "variant": variant,
                                "options": found[variant],
                                "mode": mode,
                                "median_s": med,
                                "min_s": min(ts),
                                "x_plain": med / statistics.median(times[name, mode]),
                            }
                        )
    finally:
        fastrnn.set_num_threads(before)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as text: one line per variant, forward and forward + backward side by side."""
    by = {(r["cell"], r["config"], r["threads"], r["variant"], r["mode"]): r for r in rows}
    head = (
        f"{'variant':26s} {'config':>9s} {'thr':>3s}  {'fwd median':>10s} {'min':>8s} "
        f"{'x plain':>7s}  {'fwd+bwd med':>11s} {'min':>8s} {'x plain':>7s}"
    )
    lines = [head, "-" * len(head)]
    for cell, config, t, variant, mode in by:
        if mode != "fwd":
            continue
        f, b = by[cell, config, t, variant, "fwd"], by[cell, config, t, variant, "fwdbwd"]
        lines.append(
            f"{variant:26s} {config:>9s} {t:3d}  {f['median_s'] * 1e3:8.2f}ms "
            f"{f['min_s'] * 1e3:6.2f}ms {f['x_plain']:7.2f}  {b['median_s'] * 1e3:9.2f}ms "
            f"{b['min_s'] * 1e3:6.2f}ms {b['x_plain']:7.2f}"
        )
    return "\n".join(lines)


def legend(rows: list[dict[str, Any]]) -> str:
    """One line per cell: the value each option was timed with, and what ``+all`` combines."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault(r["cell"], {})[r["variant"]] = r["options"]
    lines = []
    for cell, found in cells.items():
        alone = {k: v for opts in found.values() if len(opts) == 1 for k, v in opts.items()}
        text = ", ".join(f"{k}={v!r}" for k, v in alone.items())
        combined = found.get(f"{cell}+all")
        if combined:
            text += f"; all = {' + '.join(combined)}"
        lines.append(f"{cell}: {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The ``--variants`` command line (its options: ``--help``)."""
    p = argparse.ArgumentParser(
        prog="python -m fastrnn.bench --variants",
        description="Time every cell option (from the cell registry) against the plain cell: "
        "training forward and forward + backward, interleaved, ratios of medians.",
    )
    p.add_argument("--cells", type=_csv(CELLS), default=list(CELLS), help="rnn,lstm,gru")
    p.add_argument(
        "--configs",
        type=_configs,
        default=["medium"],
        help=f"comma-separated names ({', '.join(CONFIGS)}) or TxBxIxH (default: medium)",
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--threads", type=_threads, default=None, help="thread count(s), e.g. 2 or 1,2")
    p.add_argument("--repeats", type=int, default=9, help="timed samples per variant")
    p.add_argument("--min-time", type=float, default=0.05, help="least seconds per sample")
    p.add_argument("--settle", type=float, default=0.05, help="pause (s) before each sample")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    import fastrnn

    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    cells, configs = args.cells, args.configs
    threads = args.threads or [fastrnn.get_num_threads()]

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"... {msg}", file=sys.stderr, flush=True)

    rows = run(
        cells,
        configs,
        args.dtype,
        threads,
        repeats=args.repeats,
        min_time=args.min_time,
        settle=args.settle,
        progress=progress,
    )
    print(f"fastrnn {fastrnn.__version__}, {args.dtype}, load {os.getloadavg()[0]:.2f}")
    print(format_table(rows))
    print(legend(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
