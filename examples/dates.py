"""Sequence to sequence with attention: translating dates written many ways into ISO 8601.

The script generates its data: calendar dates between 1950-01-01 and 2049-12-31, each written
in one of eight formats a person might use, and the same date in ISO form as the target::

    29 November 2026          -> 2026-11-29
    11/29/26                  -> 2026-11-29    (two-digit years: 50-99 are 19xx, 00-49 20xx)
    Nov 29, 2026              -> 2026-11-29
    Sunday, November 29, 2026 -> 2026-11-29

A character-level :class:`fastrnn.nn.Seq2Seq` learns the mapping: a bidirectional LSTM encoder
reads the source characters, and an LSTM decoder with Luong attention and input feeding writes
the ten target characters and an end token. 10% of the calendar days are held out (never seen
in training, in any format); the summary reports the exact-match accuracy of greedy decoding
and of beam search on them (the README has a measured run), and the attention weights of a few
examples are saved as a heatmap: the decoder learns to read the year, then the month, then the
day, wherever the format puts them.

Training stops when greedy decoding reaches ``--target`` (99.9%) exact match on 500 validation
examples (days of neither the training nor the test set), or after ``--max-seconds``.

Run ``python examples/dates.py`` (at most ``--max-seconds``, 150 by default, then evaluates),
or ``python examples/dates.py --quick`` for a smoke run. ``--json PATH`` writes the summary
(``greedy_exact_match``, ``beam_exact_match``, ``train_seconds``, ...); the heatmap needs
matplotlib (``pip install -e ".[examples]"``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np

from fastrnn.nn import CrossEntropyLoss, Seq2Seq
from fastrnn.optim import Adam, clip_grad_norm_

try:  # run as a script: examples/ is on sys.path
    from _progress import ProgressBar
except ImportError:  # imported as examples.dates
    from examples._progress import ProgressBar

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST, LAST = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)


def _fmt(d: datetime.date, k: int) -> str:
    """Date ``d`` written in format ``k`` (0 <= k < N_FORMATS)."""
    month, yy = MONTHS[d.month - 1], d.year % 100
    return [
        f"{d.day} {month} {d.year}",  # 29 November 2026
        f"{d.month:02d}/{d.day:02d}/{yy:02d}",  # 11/29/26
        f"{month[:3]} {d.day}, {d.year}",  # Nov 29, 2026
        f"{month} {d.day}, {d.year}",  # November 29, 2026
        f"{d.day:02d}.{d.month:02d}.{d.year}",  # 29.11.2026
        f"{DAYS[d.weekday()]}, {month} {d.day}, {d.year}",  # Sunday, November 29, 2026
        f"{d.day}-{month[:3].upper()}-{yy:02d}",  # 29-NOV-26
        f"{d.year}{d.month:02d}{d.day:02d}",  # 20261129
    ][k]


N_FORMATS = 8
SRC_CHARS = sorted(
    {c for k in range(N_FORMATS) for d in (datetime.date(2026, m, 28) for m in range(1, 13))
     for c in _fmt(d, k)} | set("0123456789") | set("".join(DAYS))
)  # fmt: skip
TGT_CHARS = list("0123456789-")
PAD = 0  # source padding id (ignored: the encoder and the attention use the lengths)
SRC_ID = {c: i + 1 for i, c in enumerate(SRC_CHARS)}
BOS, EOS = len(TGT_CHARS), len(TGT_CHARS) + 1
TGT_ID = {c: i for i, c in enumerate(TGT_CHARS)}
TGT_LEN = 11  # "YYYY-MM-DD" + end token


def split_days(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ordinals of the calendar days, split 90% training / 10% held out."""
    days = np.arange(FIRST.toordinal(), LAST.toordinal() + 1)
    rng.shuffle(days)
    n_test = len(days) // 10
    return days[n_test:], days[:n_test]


def make_batch(days: np.ndarray, rng: np.random.Generator, n: int):
    """``n`` random (day, format) pairs: src (S, n), lengths (n,), tgt_in and tgt_out (11, n)."""
    picked = rng.choice(days, n)
    kinds = rng.integers(0, N_FORMATS, n)
    texts = [
        _fmt(datetime.date.fromordinal(int(o)), int(k)) for o, k in zip(picked, kinds, strict=True)
    ]
    return encode(texts) + targets(picked)


def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    lengths = np.array([len(t) for t in texts])
    src = np.full((lengths.max(), len(texts)), PAD, np.intp)
    for b, t in enumerate(texts):
        src[: len(t), b] = [SRC_ID[c] for c in t]
    return src, lengths, texts


def targets(ordinals: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    iso = [datetime.date.fromordinal(int(o)).isoformat() for o in ordinals]
    out = np.array([[TGT_ID[c] for c in s] + [EOS] for s in iso], np.intp).T  # (11, n)
    tgt_in = np.concatenate([np.full((1, len(iso)), BOS, np.intp), out[:-1]])
    return tgt_in, out, iso


def decode_text(tokens: np.ndarray) -> str:
    return "".join(TGT_CHARS[t] if t < len(TGT_CHARS) else "?" for t in tokens)


def exact_match(model: Seq2Seq, data, beam_width: int, chunk: int = 500):
    """Fraction of sources decoded exactly to their ISO date, and the decoded strings."""
    src, lengths, _, _, _, iso = data
    out = []
    for i in range(0, len(iso), chunk):
        s, n = src[:, i : i + chunk], lengths[i : i + chunk]
        s = s[: n.max()]
        if beam_width == 1:
            hyps, _ = model.greedy(s, n, bos=BOS, eos=EOS, max_len=TGT_LEN + 2)
        else:
            hyps, _ = model.beam_search(
                s, n, bos=BOS, eos=EOS, max_len=TGT_LEN + 2, beam_width=beam_width
            )
        out += [decode_text(h) for h in hyps]
    return float(np.mean([a == b for a, b in zip(out, iso, strict=True)])), out


def plot_attention(path: Path, model: Seq2Seq, texts: list[str]) -> bool:
    """Heatmaps of greedy decoding's attention weights for ``texts``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    src, lengths, _ = encode(texts)
    hyps, weights = model.greedy(src, lengths, bos=BOS, eos=EOS, max_len=TGT_LEN + 2)
    fig, axes = plt.subplots(1, len(texts), figsize=(4.2 * len(texts), 4.2))
    for b, ax in enumerate(np.atleast_1d(axes)):
        out = decode_text(hyps[b]) + "$"  # $: the end token
        w = weights[: len(out), b, : lengths[b]]
        ax.imshow(w, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(lengths[b]), list(texts[b]), fontsize=8)
        ax.set_yticks(range(len(out)), list(out), fontsize=8)
        ax.set_xlabel("source character")
        ax.set_title(f"{texts[b]!r}", fontsize=9)
    np.atleast_1d(axes)[0].set_ylabel("generated character")
    fig.suptitle("attention weights of greedy decoding (row: output step)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--max-seconds", type=float, default=150.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=20000, help="most training steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128, help="decoder hidden size (encoder: half)")
    ap.add_argument("--embed", type=int, default=32)
    ap.add_argument("--attention", choices=["general", "dot", "additive"], default="general")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    ap.add_argument("--clip", type=float, default=5.0, help="max global gradient norm")
    ap.add_argument("--beam", type=int, default=5, help="beam width")
    ap.add_argument("--n-test", type=int, default=2000, help="held-out examples evaluated")
    ap.add_argument("--eval-every", type=int, default=250, help="steps between validations")
    ap.add_argument(
        "--target", type=float, default=0.999, help="stop early at this validation exact match"
    )
    ap.add_argument("--plot", type=Path, default=Path("dates_attention.png"))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the summary here as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a tiny model for a few steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.hidden, args.embed = 5, 16, 16, 8
        args.n_test, args.eval_every, args.beam = 20, 5, 2
    return args


def main(argv: list[str] | None = None) -> dict:
    """Train, evaluate, plot; print and return the summary."""
    t_start = time.perf_counter()
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train_days, test_days = split_days(rng)
    val_days, train_days = train_days[:1000], train_days[1000:]
    val = make_batch(val_days, rng, min(500, args.n_test))
    test = make_batch(test_days, rng, args.n_test)

    model = Seq2Seq(
        len(SRC_CHARS) + 1,
        len(TGT_CHARS) + 2,
        embed_size=args.embed,
        hidden_size=args.hidden,
        attention=args.attention,
        seed=args.seed,
    )
    params = list(model.parameters())
    opt = Adam(params, lr=args.lr)
    criterion = CrossEntropyLoss()
    bar = ProgressBar(args.max_seconds, desc="dates", unit=" s")
    t0 = time.perf_counter()
    step, loss, val_acc, done_at = 0, float("nan"), 0.0, 0.0
    while step < args.steps and time.perf_counter() - t0 < args.max_seconds:
        src, lengths, _, tgt_in, tgt_out, _ = make_batch(train_days, rng, args.batch)
        logits = model(src, lengths, tgt_in)
        loss = float(criterion(logits, tgt_out))
        model.backward(criterion.backward())
        clip_grad_norm_(params, args.clip)
        opt.step()
        opt.zero_grad()
        step += 1
        if step % args.eval_every == 0:
            val_acc, _ = exact_match(model, val, 1)
            if val_acc >= args.target:
                break
        done_at = time.perf_counter() - t0
        bar.update(value=min(done_at, args.max_seconds), loss=round(loss, 4), val=val_acc)
    train_seconds = time.perf_counter() - t0
    bar.close()

    greedy_acc, greedy_out = exact_match(model, test, 1)
    t1 = time.perf_counter()
    beam_acc, beam_out = exact_match(model, test, args.beam)
    beam_seconds = time.perf_counter() - t1
    examples = ["29 November 2026", "11/29/26", "Nov 29, 2026", "Sunday, November 29, 2026"]
    plotted = False
    if not args.no_plot:
        plotted = plot_attention(args.plot, model, examples)
    summary = {
        "greedy_exact_match": greedy_acc,
        "beam_exact_match": beam_acc,
        "train_seconds": train_seconds,
        "steps": step,
        "final_loss": loss,
        "n_test": len(test[-1]),
        "beam_width": args.beam,
        "beam_seconds": beam_seconds,
        "errors": [
            (s, got, want)
            for s, got, want in zip(test[2], beam_out, test[-1], strict=True)
            if got != want
        ][:10],
        "plot": str(args.plot) if plotted else None,
        "seconds": time.perf_counter() - t_start,
    }
    H = args.hidden
    print("== dates: free-form dates -> ISO 8601 with an attentive encoder-decoder ==")
    print(
        f"data      {N_FORMATS} formats of days in {FIRST}..{LAST}; {len(test_days)} days "
        f"held out, {summary['n_test']} held-out examples"
    )
    print(
        f"model     chars -> Embedding({args.embed}) -> BiLSTM(2x{H // 2}) | LSTM({H}) decoder, "
        f"{args.attention} attention, input feeding"
    )
    print(
        f"training  {step} steps of {args.batch} in {train_seconds:.1f} s, Adam(lr={args.lr}), "
        f"final loss {loss:.4f}"
    )
    print(
        f"exact     greedy {100 * greedy_acc:.2f}%, beam (width {args.beam}) {100 * beam_acc:.2f}%"
    )
    for s, want in zip(examples, ["2026-11-29"] * 4, strict=True):
        src, lengths, _ = encode([s])
        hyps, _ = model.beam_search(
            src, lengths, bos=BOS, eos=EOS, max_len=TGT_LEN + 2, beam_width=args.beam
        )
        print(f"          {s!r:30} -> {decode_text(hyps[0])!r} (want {want!r})")
    for s, got, want in summary["errors"][:3]:
        print(f"  error:  {s!r:30} -> {got!r} (want {want!r})")
    if not args.no_plot:
        print(f"plot      {args.plot}" if plotted else "plot      skipped (needs matplotlib)")
    print(f"time      {summary['seconds']:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
