"""``python -m fastrnn.bench --inference``: inference forwards and streaming steps side by side.

Times, interleaved (A B C D A B C D ...), in eval mode:

* ``fastrnn``: the float32 layer (``fastrnn.LSTM(...).eval()`` and so on), weights packed once;
* ``fastrnn-repack``: the same, re-packing its weights at every call (``flatten_parameters()``
  before each), as every call did before the weights were kept packed;
* ``fastrnn-int8``: the same layer through :func:`fastrnn.quantize_dynamic` (its default
  ``int8="auto"`` keeps float32 the layers where int8 measured slower; the output lists them);
* ``torch``: ``torch.nn.LSTM`` with the same weights under ``torch.inference_mode()``;
* ``torch-int8``: ``torch.ao.quantization.quantize_dynamic`` of it (qint8);

over the bench's standard shapes (T, B, I, H) and one step (T = 1, B = 1, I = H = 256) of the
streaming API (``layer.step``; ``torch.nn.LSTMCell`` and ``torch.nn.LSTM`` with T = 1 for
torch), each call carrying the state its previous call returned. Prints medians and
minimums, the float32 forwards' GFLOP/s as a share of the machine's multiply-add roof
(:func:`fastrnn.bench.fma_roof`: how much faster any float32 implementation could run), and the
output error of int8 against float32 per layer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from fastrnn.bench import (
    CONFIGS,
    STEADY,
    flops,
    fma_roof,
    parse_config,
    time_interleaved,
    torch_or_none,
)
from fastrnn.cells import get_cell


def _layers(cell: str, I: int, H: int, torch):
    import fastrnn

    title = get_cell(cell).title  # fastrnn.LSTM and torch.nn.LSTM, ...
    cls = getattr(fastrnn, title)
    f32 = cls(I, H, seed=0).eval()
    q = fastrnn.quantize_dynamic(f32)
    out = {"fastrnn": f32, "fastrnn-repack": f32, "fastrnn-int8": q}
    if torch is not None:
        tcls = getattr(torch.nn, title)
        t = tcls(I, H).eval()
        with torch.no_grad():
            for name, p in t.named_parameters():
                p.copy_(torch.from_numpy(f32._parameters[name].data))
        out["torch"] = t
        out["torch-int8"] = torch.ao.quantization.quantize_dynamic(t, {tcls}, dtype=torch.qint8)
    return out


def _calls(layers, x, torch):
    fns = {}
    for name, m in layers.items():
        if name.startswith("torch"):
            xt = torch.from_numpy(x)

            def run(m=m, xt=xt):
                with torch.inference_mode():
                    m(xt)

            fns[name] = run
        elif name == "fastrnn-repack":

            def repack(m=m):
                m.flatten_parameters()
                m(x)

            fns[name] = repack
        else:
            fns[name] = lambda m=m: m(x)
    return fns


def _row(label, times):
    return {k: (statistics.median(v), min(v)) for k, v in times.items()} | {"label": label}


def _print(rows, title, unit="ms"):
    keys = [k for k in rows[0] if k != "label"]
    scale = 1e3 if unit == "ms" else 1e6
    print(
        f"\n{title} ({unit} per call: median / min; ratio = fastrnn float32 median / other median)"
    )
    print("  " + "config".ljust(16) + "".join(k.rjust(22) for k in keys))
    for r in rows:
        base = r["fastrnn"][0]
        cells = "".join(
            f"{r[k][0] * scale:9.3f} /{r[k][1] * scale:8.3f}{base / r[k][0]:5.2f}x".rjust(22)
            for k in keys
        )
        print("  " + r["label"].ljust(16) + cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastrnn.bench --inference")
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-step", action="store_true")
    args = ap.parse_args(argv)
    torch = None if args.no_torch else torch_or_none()
    import fastrnn

    fastrnn.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(
        f"fastrnn.bench --inference: {args.threads} threads, int8 path "
        f"{fastrnn.quantization.get_quantized_isa()}, torch "
        f"{'absent' if torch is None else torch.__version__}"
    )
    rng = np.random.default_rng(0)
    rows, errors, notes, rates = [], [], [], []
    for cell in args.cells.split(","):
        for config in args.configs.split(","):
            T, B, I, H = parse_config(config)
            layers = _layers(cell, I, H, torch)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            y32 = layers["fastrnn"](x)[0]
            y8 = layers["fastrnn-int8"](x)[0]
            errors.append((f"{cell} {config}", np.abs(y8 - y32).max(), np.abs(y32).max()))
            if not layers["fastrnn-int8"].quantized:  # quantize_dynamic's int8="auto" rule
                notes.append(f"  {cell} {config}: fastrnn-int8 is {layers['fastrnn-int8']!r}")
            times = time_interleaved(_calls(layers, x, torch), args.repeats, args.min_time)
            rows.append(_row(f"{cell} {config}", times))
            f = flops(cell, (T, B, I, H), "fwd")
            rates.append(
                (
                    f"{cell} {config}",
                    {
                        k: f / statistics.median(times[k]) / 1e9
                        for k in ("fastrnn", "torch")
                        if k in times
                    },
                )
            )
    _print(rows, "Inference forward")
    roof = fma_roof(np.float32, args.threads)
    print(
        f"\nFloat32 forwards against the multiply-add roof ({args.threads} threads: "
        f"{roof:.1f} GFLOP/s, fastrnn.bench.fma_roof; GEMM FLOPs only):"
    )
    for label, r in rates:
        print(
            "  "
            + label.ljust(16)
            + "".join(f"   {k} {g:6.1f} GFLOP/s {100 * g / roof:3.0f}%" for k, g in r.items())
        )
    if notes:
        print("\nLayers that quantize_dynamic keeps float32 (measured slower in int8):")
        print("\n".join(notes))
    print("\nint8 output error against float32 (max |y8 - y32|, max |y32|):")
    for label, err, ref in errors:
        print(f"  {label:16s} {err:.2e}  {ref:.2e}")
    if not args.no_step:
        lstm = fastrnn.LSTM(256, 256, seed=0).eval()
        q = fastrnn.quantize_dynamic(lstm)
        x1 = rng.standard_normal((1, 256)).astype(np.float32)
        # each call carries the state its previous call returned, as a stream does
        st = {"f32": lstm.step(x1)[1], "int8": q.step(x1)[1]}

        def step(key, m):
            st[key] = m.step(x1, st[key])[1]

        def repack_step():
            lstm.flatten_parameters()
            step("f32", lstm)

        fns = {
            "fastrnn": lambda: step("f32", lstm),
            "fastrnn-repack": repack_step,
            "fastrnn-int8": lambda: step("int8", q),
        }
        if torch is not None:
            cell = torch.nn.LSTMCell(256, 256).eval()
            full = torch.nn.LSTM(256, 256).eval()
            xt, x3 = torch.from_numpy(x1), torch.from_numpy(x1[None])
            st["cell"] = (torch.zeros(1, 256), torch.zeros(1, 256))
            st["full"] = (torch.zeros(1, 1, 256), torch.zeros(1, 1, 256))

            def tcell():
                with torch.inference_mode():
                    st["cell"] = cell(xt, st["cell"])

            def tfull():
                with torch.inference_mode():
                    st["full"] = full(x3, st["full"])[1]

            fns["torch LSTMCell"] = tcell
            fns["torch LSTM T=1"] = tfull
        times = time_interleaved(fns, args.repeats, args.min_time, warm=STEADY)
        _print([_row("lstm step 1x256", times)], "Streaming step (B=1, I=H=256)", unit="us")
        F = fastrnn.functional
        team = F._step_team(1, 1024, 256, 256, 1, {F._LAST_END: time.perf_counter()})
        print(
            f"  (the float32 steps, one after another, ran on {team} thread(s): a step follows "
            "the layer's previous call within functional._BURST_S, while the team spins; "
            "a step after a pause runs on one)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
