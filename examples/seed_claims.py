"""The textbook claims about training recurrent networks, measured.

Five small experiments, each printed as a table (and drawn in one PNG when matplotlib is
installed):

(a) Long-range dependencies. The adding problem (Hochreiter & Schmidhuber, 1997): each input step
    is a pair (value in [0, 1], marker); two steps are marked, one in each half of the sequence,
    and the target at the end is the sum of the two marked values. Predicting the mean, 1.0,
    gives an MSE of 1/6 = 0.167. With T = 100 steps between the first marker and the answer, a
    vanilla (tanh) RNN stays at that baseline, while an LSTM and a GRU learn the task. Each
    trains on the same batches with Adam for up to 2000 steps, stopping once its test MSE is
    below 1% of the baseline.
(b) Exploding gradients. A ReLU RNN whose recurrent matrix starts as the identity (the IRNN of
    Le, Jaitly & Hinton, 2015: the state adds up its inputs, so nothing decays) is trained with
    plain SGD on the adding problem (T = 50). The first gradient is in the thousands; without
    clipping, that one step throws the weights where the state overflows, and the next loss is
    inf or NaN, for every seed tried. With ``clip_grad_norm_(params, 1.0)`` the same runs train
    stably (the loss falls from its initial value to the trivial baseline within 300 steps; solving
    the task takes longer). The gradient norms are logged.
(c) Step size. SGD with momentum 0.9 on a GRU (adding problem, T = 10) over learning rates from
    1e-4 to 1: the largest diverge within a few steps, the smallest crawl (hundreds of steps just to
    learn to predict the mean), and only a band in between learns the task within the budget.
(d) Vanishing gradients. For a loss that reads only the final hidden state, the norm of
    dL/dh_t against t, for the tanh RNN, the LSTM and the GRU, before and after training in (a).
    At PyTorch's default initialisation all three decay geometrically with the distance to the
    loss (the gates start half open: an LSTM's forget gate near 0.5 halves the cell's gradient
    at every step). Training changes that only for the gated cells: the trained LSTM and GRU keep
    the gradient alive across the whole sequence (that is how they solve (a)), while the trained
    RNN's decays even faster. dL/dh_t is computed exactly with the layers' own backward: run the
    steps before t, then run the steps from t on starting from that state and backpropagate; the
    gradient of that second run's initial state is dL/dh_t. In float64, so that nothing underflows.
(e) Attention as the remedy for long-range dependencies. Reversing a sequence of random digits
    makes the first output depend on the last input and the last output on the first. Two
    encoder-decoders (``fastrnn.nn.Seq2Seq``: bidirectional LSTM encoder, LSTM decoder, the same
    sizes, batches and steps, sequences of 2 to 30 digits) differ only in attention: without it
    the decoder sees the source only through the encoder's final state, a fixed-size summary
    that long sequences overflow; with Luong attention it reads the position it needs at every
    step. Greedy decoding of 200 new sequences per length: per-digit accuracy and exact match.

Run ``python examples/seed_claims.py`` (under 3 minutes on 2 cores) or
``python examples/seed_claims.py --quick --steps 3`` for a smoke test.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import numpy as np

import fastrnn
from fastrnn.nn import CrossEntropyLoss, Linear, Module, MSELoss, Seq2Seq
from fastrnn.optim import SGD, Adam, clip_grad_norm_

try:  # run as a script: examples/ is on sys.path
    from _progress import ProgressBar
except ImportError:  # imported as examples.seed_claims
    from examples._progress import ProgressBar

CELLS = ("RNN", "LSTM", "GRU")
TRIVIAL_MSE = 1.0 / 6.0  # Var(U1 + U2) for U1, U2 ~ U(0, 1): the MSE of always predicting 1.0
SOLVED = 0.01  # (a) stops training a cell once its test MSE is below this fraction of TRIVIAL_MSE


# -- the task and the model ---------------------------------------------------------------------
def adding_problem(rng: np.random.Generator, T: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (T, B, 2) and targets (B,) of the adding problem."""
    x = np.zeros((T, B, 2), np.float32)
    x[:, :, 0] = rng.random((T, B))
    rows = np.arange(B)
    first = rng.integers(0, T // 2, B)
    second = rng.integers(T // 2, T, B)
    x[first, rows, 1] = 1.0
    x[second, rows, 1] = 1.0
    return x, x[first, rows, 0] + x[second, rows, 0]


class ManyToOne(Module):
    """A recurrent layer, then ``Linear(H, 1)`` on its final hidden state: (T, B, I) -> (B,)."""

    def __init__(
        self, cell: str, input_size: int, hidden: int, seed: int, dtype=np.float32, **kw
    ) -> None:
        super().__init__()
        self.cell = cell
        self.rnn = getattr(fastrnn, cell)(input_size, hidden, seed=seed, dtype=dtype, **kw)
        self.head = Linear(hidden, 1, seed=seed + 1, dtype=dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, _ = self.rnn(x)
        self._out_shape = out.shape
        return self.head(out[-1])[:, 0]

    def backward(self, dpred: np.ndarray) -> None:
        dout = np.zeros(self._out_shape, dpred.dtype)
        dout[-1] = self.head.backward(dpred[:, None])
        self.rnn.backward(dout)


def train_step(model: ManyToOne, opt, x, y, clip: float | None) -> tuple[float, float]:
    """One forward/backward/update; return (loss, gradient norm before clipping)."""
    criterion = MSELoss()
    loss = float(criterion(model(x), y))
    model.backward(criterion.backward())
    params = list(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a non-finite norm is reported below
        norm = clip_grad_norm_(params, math.inf if clip is None else clip)
    if math.isfinite(loss) and math.isfinite(norm):
        opt.step()
    opt.zero_grad()
    return loss, norm


def mse(model: ManyToOne, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with np.errstate(all="ignore"):
        out = float(np.mean((model(x) - y) ** 2))
    model.train()
    return out


# -- (a) long-range dependencies ----------------------------------------------------------------
def claim_a(args, bar: ProgressBar) -> dict:
    rng = np.random.default_rng(args.seed)
    x_test, y_test = adding_problem(rng, args.T, 1000)
    out = {"curves": {}, "final": {}, "models": {}, "steps": {}}
    for k, cell in enumerate(CELLS):
        model = ManyToOne(cell, 2, args.hidden, seed=args.seed + 10 * k)
        opt = Adam(list(model.parameters()), lr=args.lr_a)
        data_rng = np.random.default_rng(args.seed + 1)  # the same batches for every cell
        curve = [(0, mse(model, x_test, y_test))]
        for step in range(1, args.steps_a + 1):
            x, y = adding_problem(data_rng, args.T, args.batch)
            train_step(model, opt, x, y, clip=1.0)
            bar.update(part="a", cell=cell)
            if step % args.eval_every == 0 or step == args.steps_a:
                curve.append((step, mse(model, x_test, y_test)))
                if curve[-1][1] < SOLVED * TRIVIAL_MSE:  # solved: spare the rest of the steps
                    bar.update(args.steps_a - step)
                    break
        out["curves"][cell] = curve
        out["final"][cell] = curve[-1][1]
        out["steps"][cell] = curve[-1][0]
        out["models"][cell] = model
    return out


def print_a(res: dict, args) -> None:
    print(f"\n(a) adding problem, T = {args.T}: test MSE (1000 sequences) during training")
    print(
        f"    Adam(lr={args.lr_a}), batch {args.batch}, hidden {args.hidden}, clip 1.0; up to "
        f"{args.steps_a} steps, stopping once the MSE is below {SOLVED:.0%} of the baseline"
    )
    print(f"    trivial baseline (always predict 1.0): MSE = {TRIVIAL_MSE:.3f}")
    steps = sorted({s for curve in res["curves"].values() for s, _ in curve})
    shown = sorted({*steps[:: max(1, len(steps) // 8)], steps[-1]})
    for curve in res["curves"].values():  # the step at which each cell stopped
        shown = sorted({*shown, curve[-1][0]})
    print("    " + f"{'step':>6}" + "".join(f"{c:>10}" for c in CELLS))
    for s in shown:
        row = f"{s:>6}"
        for c in CELLS:
            v = dict(res["curves"][c]).get(s)
            row += f"{'':>10}" if v is None else f"{v:>10.4f}"
        print("    " + row)
    verdict = ", ".join(
        f"{c} {'learned' if res['final'][c] < 0.1 * TRIVIAL_MSE else 'did not learn'}"
        f" ({res['final'][c] / TRIVIAL_MSE:.1%} of baseline after {res['steps'][c]} steps)"
        for c in CELLS
    )
    print(f"    => {verdict}")


# -- (b) exploding gradients --------------------------------------------------------------------
def identity_relu_rnn(hidden: int, seed: int) -> ManyToOne:
    """ReLU RNN with W_hh = I (Le, Jaitly & Hinton's IRNN): the state adds up its inputs."""
    model = ManyToOne("RNN", 2, hidden, seed=seed, nonlinearity="relu")
    model.rnn.weight_hh_l0.data[...] = np.eye(hidden)
    return model


def claim_b(args, bar: ProgressBar) -> dict:
    out: dict = {}
    x_test, y_test = adding_problem(np.random.default_rng(300), args.T_b, 500)
    for arm, clip in (("no clip", None), ("clip", 1.0)):
        runs = []
        for s in range(args.seeds_b):
            model = identity_relu_rnn(args.hidden, seed=100 + 10 * s)
            opt = SGD(list(model.parameters()), lr=args.lr_b)
            data_rng = np.random.default_rng(200 + s)
            start = mse(model, x_test, y_test)
            log, diverged_at = [], None
            with np.errstate(all="ignore"):  # overflow is the point here; it is detected below
                for step in range(1, args.steps_b + 1):
                    x, y = adding_problem(data_rng, args.T_b, args.batch)
                    loss, norm = train_step(model, opt, x, y, clip)
                    log.append((step, loss, norm))
                    bar.update(part="b", arm=arm)
                    if not (math.isfinite(loss) and math.isfinite(norm)) or loss > 1e6:
                        diverged_at = step
                        bar.update(args.steps_b - step)
                        break
            runs.append(
                {
                    "log": log,
                    "diverged_at": diverged_at,
                    "test_mse_start": start,
                    "test_mse": mse(model, x_test, y_test) if diverged_at is None else math.nan,
                }
            )
        out[arm] = runs
    return out


def print_b(res: dict, args) -> None:
    print(
        f"\n(b) exploding gradients: ReLU RNN with W_hh = I (IRNN), adding problem T = "
        f"{args.T_b}, SGD(lr={args.lr_b}), {args.steps_b} steps, {args.seeds_b} seeds"
    )
    print("    gradient norm (before clipping) and training loss, first seed:")
    logs = {k: v[0]["log"] for k, v in res.items()}
    longest = max(len(v) for v in logs.values())
    marks = sorted({1, 2, 3, 5, 10, 20, 50, 100, 200, 500, longest} & set(range(1, longest + 1)))
    print("    " + f"{'step':>6}" + "".join(f"{k + ': norm':>16}{'loss':>12}" for k in logs))
    for m in marks:
        row = f"{m:>6}"
        for log in logs.values():
            if m <= len(log):
                _, loss, norm = log[m - 1]
                row += f"{norm:>16.3g}{loss:>12.3g}"
            else:
                row += f"{'(stopped)':>16}{'':>12}"
        print("    " + row)
    for k, runs in res.items():
        n_div = sum(r["diverged_at"] is not None for r in runs)
        line = f"    {k:>8}: {n_div}/{len(runs)} runs diverged"
        where = [r["diverged_at"] for r in runs if r["diverged_at"] is not None]
        if where:
            line += f" (non-finite loss or gradient at step {', '.join(map(str, where))})"
        done = [r for r in runs if r["diverged_at"] is None]
        if done:
            line += "; test MSE " + ", ".join(
                f"{r['test_mse_start']:.3g} -> {r['test_mse']:.3g}" for r in done
            )
        print(line)


# -- (c) step size ------------------------------------------------------------------------------
def first_step_below(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((s for s, v in curve if v < level), None)


def claim_c(args, bar: ProgressBar) -> dict:
    out = {}
    x_test, y_test = adding_problem(np.random.default_rng(400), args.T_c, 500)
    for lr in args.lrs:
        model = ManyToOne("GRU", 2, args.hidden, seed=500)
        opt = SGD(list(model.parameters()), lr=lr, momentum=0.9)
        data_rng = np.random.default_rng(600)
        curve, diverged_at = [(0, mse(model, x_test, y_test))], None
        with np.errstate(all="ignore"):
            for step in range(1, args.steps_c + 1):
                x, y = adding_problem(data_rng, args.T_c, args.batch)
                loss, _ = train_step(model, opt, x, y, clip=None)
                bar.update(part="c", lr=f"{lr:g}")
                if not math.isfinite(loss) or loss > 1e6:
                    diverged_at = step
                    bar.update(args.steps_c - step)
                    break
                if step % args.eval_every_c == 0 or step == args.steps_c:
                    curve.append((step, mse(model, x_test, y_test)))
        final = math.nan if diverged_at else curve[-1][1]
        solved = first_step_below(curve, 0.1 * TRIVIAL_MSE)
        to_mean = first_step_below(curve, 1.2 * TRIVIAL_MSE)
        if diverged_at or final > curve[0][1]:
            verdict = "diverges"
        elif solved is not None:
            verdict = "learns the task"
        elif to_mean is None or to_mean > 4 * args.eval_every_c:
            verdict = "crawls"
        else:
            verdict = "too slow: predicts the mean only"
        out[lr] = {
            "curve": curve,
            "final": final,
            "diverged_at": diverged_at,
            "steps_to_mean": to_mean,
            "steps_to_solve": solved,
            "verdict": verdict,
        }
    return out


def print_c(res: dict, args) -> None:
    print(
        f"\n(c) step size: SGD(momentum=0.9) on GRU({args.hidden}) -> Linear, adding problem "
        f"T = {args.T_c}, {args.steps_c} steps, no clipping; test MSE every "
        f"{args.eval_every_c} steps"
    )
    print(
        "    "
        + f"{'lr':>8}{'MSE at start':>14}{'at end':>10}{'steps to < 0.2':>16}"
        + f"{'to < 0.017':>12}   verdict"
    )
    for lr, r in res.items():
        end = f"step {r['diverged_at']}" if r["diverged_at"] else f"{r['final']:.4f}"
        to_mean = "-" if r["steps_to_mean"] is None else str(r["steps_to_mean"])
        to_solve = "-" if r["steps_to_solve"] is None else str(r["steps_to_solve"])
        print(
            f"    {lr:>8g}{r['curve'][0][1]:>14.4f}{end:>10}{to_mean:>16}{to_solve:>12}   "
            + r["verdict"]
        )
    print(
        "    (0.2 ~ 1.2 x the trivial MSE: the network predicts the mean; 0.017 = 0.1 x trivial: "
        "it adds the marked values)"
    )


# -- (d) vanishing gradients --------------------------------------------------------------------
def grad_wrt_hidden(layer, x: np.ndarray, u: np.ndarray, ts: list[int]) -> list[float]:
    """Mean over the batch of ||dL/dh_t|| for L = sum_b <u_b, h_T,b>, at each t in ``ts``.

    h_t is the state after t steps (h_0 the initial state). The steps from t on are run as a
    second call started from h_t; the gradient its backward returns for that initial state is
    dL/dh_t (for the LSTM, with c_t held as the other part of the state).
    """
    lstm = isinstance(layer, fastrnn.LSTM)
    B, H = u.shape
    zeros = np.zeros((1, B, H), u.dtype)
    norms = []
    for t in ts:
        state = (zeros, zeros) if lstm else zeros
        if t > 0:
            layer.eval()  # the steps before t need no backward
            _, state = layer(x[:t], state)
            layer.train()
        out, _ = layer(x[t:], state)
        dh_n = u[None]
        upstream = (dh_n, np.zeros_like(dh_n)) if lstm else dh_n
        _, dstate = layer.backward(np.zeros_like(out), upstream)
        dh = dstate[0] if lstm else dstate
        norms.append(float(np.linalg.norm(dh[0], axis=1).mean()))
    layer.zero_grad()  # the backward accumulated weight gradients: not wanted here
    return norms


def claim_d(args, trained: dict, bar: ProgressBar) -> dict:
    rng = np.random.default_rng(700)
    x, _ = adding_problem(rng, args.T, 32)
    x = x.astype(np.float64)
    u = rng.standard_normal((32, args.hidden))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    ts = sorted({*range(0, args.T, max(1, args.T // 10)), args.T - 1, args.T})
    out = {"t": ts, "norms": {}}
    # In float64, so that the tiny norms far from the loss do not underflow to zero.
    for k, cell in enumerate(CELLS):
        model = ManyToOne(cell, 2, args.hidden, seed=args.seed + 10 * k, dtype=np.float64)
        out["norms"][f"{cell} init"] = grad_wrt_hidden(model.rnn, x, u, ts)
        bar.update(part="d", cell=cell)
        if cell in trained:
            model.load_state_dict(trained[cell].state_dict())
            out["norms"][f"{cell} trained"] = grad_wrt_hidden(model.rnn, x, u, ts)
        bar.update(part="d", cell=cell)
    return out


def print_d(res: dict, args) -> None:
    print(
        f"\n(d) vanishing gradients: mean ||dL/dh_t|| for L = <u, h_T>, |u| = 1, T = {args.T}, "
        "32 sequences of (a); init = default initialisation, trained = the models of (a)"
    )
    names = list(res["norms"])
    print("    " + f"{'t':>5}" + "".join(f"{n:>14}" for n in names))
    for i, t in enumerate(res["t"]):
        print("    " + f"{t:>5}" + "".join(f"{res['norms'][n][i]:>14.3g}" for n in names))


# -- (e) attention and long-range dependencies ---------------------------------------------------
DIGITS = 10
BOS_E, EOS_E = DIGITS, DIGITS + 1


def reversal_batch(rng: np.random.Generator, B: int, lo: int, hi: int):
    """Random digit sequences of lengths in [lo, hi] and their reversals: src, lengths,
    decoder inputs and targets (time-major; targets past the end token are ignored)."""
    lengths = rng.integers(lo, hi + 1, B)
    S = int(lengths.max())
    src = rng.integers(0, DIGITS, (S, B))
    past = np.arange(S)[:, None] >= lengths[None, :]
    src[past] = 0
    tgt = np.full((S + 1, B), EOS_E)
    for b in range(B):
        tgt[: lengths[b], b] = src[: lengths[b], b][::-1]
    tgt_in = np.concatenate([np.full((1, B), BOS_E), tgt[:-1]])
    tgt_out = tgt.copy()
    tgt_out[np.arange(S + 1)[:, None] > lengths[None, :]] = -100  # ignore_index
    return src, lengths, tgt_in, tgt_out


def reversal_accuracy(model: Seq2Seq, rng: np.random.Generator, L: int, n: int = 200):
    """(per-digit accuracy, exact match) of greedy decoding on n sequences of length L."""
    src = rng.integers(0, DIGITS, (L, n))
    hyps, _ = model.greedy(src, np.full(n, L), bos=BOS_E, eos=EOS_E, max_len=L + 2)
    right = exact = 0
    for b, got in enumerate(hyps):
        want = src[::-1, b]
        k = min(len(got), L)
        right += int((got[:k] == want[:k]).sum())  # missing or extra digits count as wrong
        exact += len(got) == L and bool((got == want).all())
    return right / (n * L), exact / n


def claim_e(args, bar: ProgressBar) -> dict:
    out = {"lengths": list(args.lengths_e), "token": {}, "exact": {}, "seconds": {}}
    for name, attention in (("attention", "general"), ("no attention", None)):
        model = Seq2Seq(DIGITS, DIGITS + 2, 16, args.hidden_e, attention=attention, seed=args.seed)
        params = list(model.parameters())
        opt = Adam(params, lr=3e-3)
        criterion = CrossEntropyLoss()
        rng = np.random.default_rng(args.seed + 5)  # the same batches for both
        t0 = time.perf_counter()
        for _ in range(args.steps_e):
            src, lengths, tgt_in, tgt_out = reversal_batch(rng, args.batch, 2, args.max_len_e)
            criterion(model(src, lengths, tgt_in), tgt_out)
            model.backward(criterion.backward())
            clip_grad_norm_(params, 5.0)
            opt.step()
            opt.zero_grad()
            bar.update(part="e", model=name)
        out["seconds"][name] = time.perf_counter() - t0
        test_rng = np.random.default_rng(900)  # the same test sequences for both
        acc = [reversal_accuracy(model, test_rng, L) for L in args.lengths_e]
        out["token"][name] = [a for a, _ in acc]
        out["exact"][name] = [e for _, e in acc]
    return out


def print_e(res: dict, args) -> None:
    print(
        f"\n(e) reversing digit sequences: encoder-decoder with vs without attention, hidden "
        f"{args.hidden_e}, {args.steps_e} Adam steps of {args.batch} sequences of "
        f"2..{args.max_len_e} digits; greedy decoding of 200 new sequences per length"
    )
    names = list(res["token"])
    print(
        "    " + f"{'length':>6}" + "".join(f"{n + ' digit':>22}{n + ' exact':>22}" for n in names)
    )
    for i, L in enumerate(res["lengths"]):
        print(
            "    "
            + f"{L:>6}"
            + "".join(f"{res['token'][n][i]:>22.1%}{res['exact'][n][i]:>22.1%}" for n in names)
        )
    print(f"    (chance per digit: {1 / DIGITS:.0%})")


# -- plot and main -----------------------------------------------------------------------------
def plot(path: Path, a: dict, b: dict, c: dict, d: dict, e: dict) -> bool:
    """Save the five experiments as one PNG; return False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(3, 2, figsize=(12, 12))
    for k, (cell, curve) in enumerate(a["curves"].items()):
        ax[0, 0].plot(*zip(*curve, strict=True), label=cell, color=f"C{k}")
    ax[0, 0].axhline(TRIVIAL_MSE, color="gray", ls="--", label="predict 1.0")
    ax[0, 0].set(title="(a) adding problem", xlabel="step", ylabel="test MSE", yscale="log")
    for k, runs in b.items():
        color = "C3" if k == "no clip" else "C2"
        for i, r in enumerate(runs):
            steps, _, norms = zip(*r["log"], strict=True)
            ax[0, 1].plot(steps, norms, color=color, label=k if i == 0 else None, alpha=0.7)
            if r["diverged_at"] is not None:  # mark the last finite norm before the overflow
                finite = [(s_, n) for s_, n in zip(steps, norms, strict=True) if math.isfinite(n)]
                if finite:
                    ax[0, 1].plot(*finite[-1], "x", color=color, ms=10)
    ax[0, 1].set(
        title="(b) ReLU RNN, W_hh = I: gradient norm (x: diverged next step)",
        xlabel="step",
        ylabel="||g|| before clipping",
        xscale="log",
        yscale="log",
    )
    for lr, r in c.items():
        steps, vals = zip(*r["curve"], strict=True)
        (line,) = ax[1, 0].plot(steps, vals, label=f"lr={lr:g}: {r['verdict']}")
        if r["diverged_at"]:  # x: where it blew up, at the height it started from
            ax[1, 0].plot([r["diverged_at"]], [vals[0]], "x", color=line.get_color(), ms=10)
    ax[1, 0].axhline(TRIVIAL_MSE, color="gray", ls="--")
    ax[1, 0].set(title="(c) SGD step size (GRU)", xlabel="step", ylabel="test MSE", yscale="log")
    for name, norms in d["norms"].items():
        cell, when = name.split()
        ax[1, 1].plot(
            d["t"],
            norms,
            color=f"C{CELLS.index(cell)}",
            ls="-" if when == "trained" else ":",
            label=name,
        )
    ax[1, 1].set(title="(d) ||dL/dh_t||, loss on h_T", xlabel="t", yscale="log")
    for k, name in enumerate(e["token"]):
        ax[2, 0].plot(e["lengths"], e["token"][name], "o-", color=f"C{k}", label=name)
        ax[2, 1].plot(e["lengths"], e["exact"][name], "o-", color=f"C{k}", label=name)
    ax[2, 0].axhline(1 / DIGITS, color="gray", ls="--", label="chance")
    ax[2, 0].set(title="(e) reversal: per-digit accuracy", xlabel="sequence length", ylim=(0, 1.02))
    ax[2, 1].set(title="(e) reversal: exact match", xlabel="sequence length", ylim=(0, 1.02))
    for a_ in ax.flat:
        a_.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="cap the steps of every experiment (smoke test)"
    )
    ap.add_argument("--T", type=int, default=100, help="sequence length of (a) and (d)")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps-a", type=int, default=2000, help="training steps per cell in (a)")
    ap.add_argument("--lr-a", type=float, default=1e-2, help="Adam's learning rate in (a)")
    ap.add_argument("--eval-every", type=int, default=100, help="steps between tests in (a)")
    ap.add_argument("--T-b", type=int, default=50, help="sequence length of (b)")
    ap.add_argument("--steps-b", type=int, default=300)
    ap.add_argument("--lr-b", type=float, default=1e-2, help="SGD's learning rate in (b)")
    ap.add_argument("--seeds-b", type=int, default=5)
    ap.add_argument("--T-c", type=int, default=10, help="sequence length of (c)")
    ap.add_argument("--steps-c", type=int, default=1000)
    ap.add_argument("--eval-every-c", type=int, default=50, help="steps between tests in (c)")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0])
    ap.add_argument("--steps-e", type=int, default=1000, help="training steps per model in (e)")
    ap.add_argument("--hidden-e", type=int, default=64, help="decoder hidden size in (e)")
    ap.add_argument("--max-len-e", type=int, default=30, help="longest training sequence of (e)")
    ap.add_argument(
        "--lengths-e", type=int, nargs="+", default=[5, 10, 15, 20, 25, 30], help="tested in (e)"
    )
    ap.add_argument(
        "--plot",
        type=Path,
        default=Path("seed_claims.png"),
        help="where to save the figure (needs matplotlib)",
    )
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="short sequences, small networks")
    args = ap.parse_args(argv)
    if args.quick:
        args.T, args.T_b, args.T_c, args.hidden, args.batch = 10, 10, 5, 8, 8
        args.seeds_b, args.lrs = 1, [1e-3, 10.0]
        args.hidden_e, args.max_len_e, args.lengths_e = 8, 5, [3, 5]
    if args.steps is not None:
        args.steps_a = min(args.steps_a, args.steps)
        args.steps_b = min(args.steps_b, args.steps)
        args.steps_c = min(args.steps_c, args.steps)
        args.steps_e = min(args.steps_e, args.steps)
        args.eval_every = min(args.eval_every, args.steps)
        args.eval_every_c = min(args.eval_every_c, args.steps)
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the five experiments; print the tables and return the results."""
    t_start = time.perf_counter()
    args = parse_args(argv)
    total = (
        len(CELLS) * args.steps_a
        + 2 * args.seeds_b * args.steps_b
        + len(args.lrs) * args.steps_c
        + 2 * len(CELLS)
        + 2 * args.steps_e
    )
    bar = ProgressBar(total, desc="seed_claims", unit=" steps")
    timings = {}
    t0 = time.perf_counter()
    a = claim_a(args, bar)
    timings["a"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = claim_b(args, bar)
    timings["b"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = claim_c(args, bar)
    timings["c"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = claim_d(args, a["models"], bar)
    timings["d"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    e = claim_e(args, bar)
    timings["e"] = time.perf_counter() - t0
    bar.close()

    print("== seed_claims: what the textbooks say about training RNNs, measured ==")
    print_a(a, args)
    print_b(b, args)
    print_c(c, args)
    print_d(d, args)
    print_e(e, args)
    plotted = False
    if not args.no_plot:
        plotted = plot(args.plot, a, b, c, d, e)
        print(f"\nplot: {args.plot}" if plotted else "\nplot: skipped (matplotlib not installed)")
    seconds = time.perf_counter() - t_start
    print(
        "time: "
        + ", ".join(f"({k}) {v:.1f} s" for k, v in timings.items())
        + f"; total {seconds:.1f} s"
    )
    del a["models"]
    return {
        "a": a,
        "b": b,
        "c": c,
        "d": d,
        "e": e,
        "plot": str(args.plot) if plotted else None,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()
