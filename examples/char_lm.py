"""Character-level LSTM language model on Tiny Shakespeare, trained with truncated BPTT.

The model is ``Embedding -> LSTM -> Linear`` with a cross-entropy loss on the next character,
trained with Adam and gradient-norm clipping. The training text is cut into ``--batch`` contiguous
streams read side by side (``fastrnn.utils.batchify``); each step reads the next ``--seq-len``
characters of every stream (``fastrnn.utils.tbptt_chunks``), starts from the hidden state the
previous step ended with, and backpropagates through those characters only. That is truncated
backpropagation through time (TBPTT): the state carries context across chunks, the gradient does
not.

Training runs until ``--max-seconds`` (default 170, so that the whole run, evaluation and sampling
included, stays within 3 minutes) or ``--steps``. The last 10% of the text is held out; the summary
reports the validation loss in nats per character (the character frequencies alone give 3.35) and a
sample of generated text.

Run ``python examples/char_lm.py`` (about 3 minutes; on 2 cores the validation loss ends well below
2.0 nats/char) or ``python examples/char_lm.py --quick --steps 3`` for a smoke test. With the
default time budget the number of steps depends on the machine; with ``--steps N`` and a generous
``--max-seconds`` the run is deterministic.

Data-parallel over MPI (``pip install "fastrnn[mpi]"``)::

    OMP_NUM_THREADS=1 mpiexec -n 2 python examples/char_lm.py --distributed

Each rank reads its share of the ``--batch`` streams (``fastrnn.distributed.batchify``) and
``fastrnn.distributed.DistributedDataParallel`` averages the gradients, so the ranks together
take the steps one process would on the whole batch (the same numbers, up to rounding); rank 0
decides when the time budget is spent, evaluates with the others' help and prints the summary.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import time
from pathlib import Path

import numpy as np

import fastrnn
from fastrnn.nn import CrossEntropyLoss, Embedding, Linear, Module
from fastrnn.optim import Adam, clip_grad_norm_
from fastrnn.utils import batchify, tbptt_chunks

try:  # run as a script: examples/ is on sys.path
    from _progress import ProgressBar
except ImportError:  # imported as examples.char_lm
    from examples._progress import ProgressBar

DATA = Path(__file__).resolve().parent / "data" / "tinyshakespeare.txt"
EVAL_BATCH, EVAL_CHUNK = 128, 64  # the held-out text is read as 128 streams


class CharLM(Module):
    """``Embedding(V, E) -> LSTM(E, H, num_layers) -> Linear(H, V)``, time-major."""

    def __init__(
        self, vocab: int, embed: int, hidden: int, layers: int, rng: np.random.Generator
    ) -> None:
        super().__init__()
        seeds = rng.integers(2**31, size=3)
        self.embed = Embedding(vocab, embed, seed=int(seeds[0]))
        self.lstm = fastrnn.LSTM(embed, hidden, num_layers=layers, seed=int(seeds[1]))
        self.head = Linear(hidden, vocab, seed=int(seeds[2]))

    def forward(self, ids, state=None):
        """Logits (T, B, V) for token ids (T, B), and the LSTM's final ``(h_n, c_n)``."""
        out, state = self.lstm(self.embed(ids), state)
        return self.head(out), state

    def backward(self, dlogits) -> None:
        """Accumulate every parameter's gradient from ``dlogits`` (T, B, V).

        No gradient is passed for the final state, and the initial state's gradient is dropped:
        backpropagation stops at the chunk's first step (truncated BPTT).
        """
        dx, _ = self.lstm.backward(self.head.backward(dlogits))
        self.embed.backward(dx)


def load_text(path: Path, quick: bool) -> tuple[np.ndarray, list[str]]:
    """The text as character ids, and the characters (the vocabulary) in code-point order."""
    text = path.read_text(encoding="utf-8")
    if quick:
        text = text[:20_000]
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    uniq, ids = np.unique(codes, return_inverse=True)
    return ids.astype(np.int64), [chr(c) for c in uniq]


def evaluate(model: CharLM, ids: np.ndarray, batch: int, seq_len: int, comm=None) -> float:
    """Mean cross-entropy (nats/char) of predicting ``ids[1:]`` from the preceding characters.

    The held-out text is read as ``batch`` streams with the state carried across chunks, as in
    training, so every character is predicted with the context of its stream. With an MPI
    ``comm``, each rank reads its share of the streams and the sums are added up.
    """
    model.eval()
    data = batchify(ids, min(batch, len(ids) - 1))
    if comm is not None:
        from fastrnn import distributed

        data = distributed.shard(data, axis=1, comm=comm)
    total, count, state = 0.0, 0, None
    chunks = zip(tbptt_chunks(data[:-1], seq_len), tbptt_chunks(data[1:], seq_len), strict=True)
    for x, y in chunks:
        logits, state = model(x, state)
        loss, _ = fastrnn.nn.cross_entropy(logits, y, reduction="sum")
        total += float(loss)
        count += y.size
    model.train()
    if comm is not None:
        total, count = comm.allreduce(np.array([total, count], dtype=np.float64))
    return total / count


def sample(
    model: CharLM,
    chars: list[str],
    prime: str,
    length: int,
    temperature: float,
    rng: np.random.Generator,
) -> str:
    """Generate ``length`` characters after ``prime``, one step at a time, state carried."""
    index = {c: i for i, c in enumerate(chars)}
    model.eval()
    ids = np.array([[index[c]] for c in prime if c in index] or [[0]])  # (T, 1)
    logits, state = model(ids)
    out = []
    for _ in range(length):
        z = logits[-1, 0].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        nxt = int(rng.choice(len(chars), p=p / p.sum()))
        out.append(chars[nxt])
        logits, state = model(np.array([[nxt]]), state)
    model.train()
    return prime + "".join(out)


def final_seconds(
    model: CharLM, val_ids: np.ndarray, chars: list[str], args: argparse.Namespace, comm=None
) -> tuple[float, float]:
    """Estimate how long the final evaluation and the sample take, from small probes.

    Both are timed on a few time steps and scaled by the number of steps they need, so that the
    time budget covers the whole run even on a machine slower than expected.
    """
    n_steps = max((len(val_ids) - 1) // EVAL_BATCH, 1)  # time steps of the full evaluation
    probe = min(16, n_steps)
    t0 = time.perf_counter()
    evaluate(model, val_ids[: EVAL_BATCH * (probe + 1) + 1], EVAL_BATCH, EVAL_CHUNK, comm)
    t_eval = (time.perf_counter() - t0) * n_steps / probe
    t0 = time.perf_counter()
    sample(model, chars, args.prime, 10, args.temperature, np.random.default_rng(0))
    per_char = (time.perf_counter() - t0) / (10 + len(args.prime))
    return t_eval, per_char * (args.sample_len + len(args.prime))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DATA, help="a plain-text file")
    ap.add_argument("--max-seconds", type=float, default=170.0, help="budget of the whole run")
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    ap.add_argument("--hidden", type=int, default=256, help="LSTM hidden size")
    ap.add_argument("--embed", type=int, default=32, help="embedding size")
    ap.add_argument("--layers", type=int, default=1, help="LSTM layers")
    ap.add_argument("--batch", type=int, default=32, help="streams read side by side")
    ap.add_argument("--seq-len", type=int, default=64, help="TBPTT chunk length")
    ap.add_argument("--lr", type=float, default=6e-3, help="Adam's peak learning rate")
    ap.add_argument("--clip", type=float, default=1.0, help="max global gradient norm")
    ap.add_argument(
        "--reset-prob",
        type=float,
        default=0.02,
        help="chance that a stream restarts from a zero state at a chunk",
    )
    ap.add_argument("--eval-every", type=int, default=500, help="steps between validations")
    ap.add_argument("--val-frac", type=float, default=0.1, help="held-out tail of the text")
    ap.add_argument("--sample-len", type=int, default=300, help="characters to generate")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    ap.add_argument("--prime", default="ROMEO:\n", help="text the sample starts from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=None, help="kernel threads (default: fastrnn's default)"
    )
    ap.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over MPI: launch with mpiexec -n N (or srun); needs fastrnn[mpi]",
    )
    ap.add_argument(
        "--save",
        type=Path,
        default=None,
        help="write the trained model to this checkpoint (examples/generate.py reads it)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny model on the first 20,000 characters (a smoke test)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.hidden, args.embed, args.batch, args.seq_len = 32, 8, 8, 16
        args.eval_every = 2
    return args


def main(argv: list[str] | None = None) -> dict:
    """Train, evaluate and sample; print and return the summary."""
    t_start = time.perf_counter()
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)  # the same draws on every rank
    if args.threads is not None:
        fastrnn.set_num_threads(args.threads)
    comm, rank, world = None, 0, 1
    if args.distributed:
        from fastrnn import distributed

        comm = distributed.init()  # an error on one rank stops them all
        rank, world = comm.Get_rank(), comm.Get_size()
        if args.threads is None and "OMP_NUM_THREADS" not in os.environ:
            # share the machine's cores between the ranks on it
            cores = os.cpu_count() or 1
            fastrnn.set_num_threads(max(1, cores // distributed.local_world_size(comm)))
        mine = distributed.shard_slice(args.batch, rank, world)  # this rank's streams

        def agree(value):  # rank 0's value on every rank (its clock decides the schedule)
            return comm.bcast(value, root=0)

        def agree_sum(values):  # the sum over the ranks
            return comm.allreduce(np.asarray(values, dtype=np.float64))
    else:
        mine = slice(None)

        def agree(value):
            return value

        def agree_sum(values):
            return np.asarray(values, dtype=np.float64)

    ids, chars = load_text(args.data, args.quick)
    n_val = int(len(ids) * args.val_frac)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    unigram = np.bincount(train_ids, minlength=len(chars)) / len(train_ids)
    # Cross-entropy of the held-out text under the training text's character frequencies.
    val_freq = np.bincount(val_ids, minlength=len(chars)) / len(val_ids)
    unigram_loss = float(-(val_freq * np.log(np.maximum(unigram, 1e-12))).sum())

    model = CharLM(len(chars), args.embed, args.hidden, args.layers, rng)
    net = model if comm is None else distributed.DistributedDataParallel(model, comm)
    params = list(model.parameters())
    n_params = sum(p.data.size for p in params)
    opt = Adam(params, lr=args.lr)
    criterion = CrossEntropyLoss()

    # Seconds kept for the final evaluation and the sample, with a margin; the evaluation's
    # share is re-measured at each validation.
    t_eval, t_sample = final_seconds(model, val_ids, chars, args, comm)
    reserve = 1.5 * (t_eval + t_sample) + 0.5
    deadline = t_start + args.max_seconds
    budget = args.max_seconds - (time.perf_counter() - t_start)
    total = args.steps if args.steps is not None else budget - reserve
    bar = ProgressBar(
        total,
        desc="char_lm",
        unit="" if args.steps is not None else "s",
        stream=None if rank == 0 else io.StringIO(),  # one bar: rank 0's
    )
    step, chars_seen, epoch = 0, 0, 0
    recent: list[float] = []
    curve: list[tuple[int, float, float]] = []
    grad_norm = 0.0
    comm_seconds, comm_bytes = 0.0, 0
    t_train = time.perf_counter()
    done = False
    while not done:
        # A new pass over the text: start the streams at a random offset so that chunk
        # boundaries move between epochs, and from a zero state (the text restarts).
        offset = int(rng.integers(args.seq_len))
        data = batchify(train_ids[offset:], args.batch)[:, mine]  # all streams, or this rank's
        inputs, targets = data[:-1], data[1:]
        state = None
        for x, y in zip(
            tbptt_chunks(inputs, args.seq_len, drop_last=True),
            tbptt_chunks(targets, args.seq_len, drop_last=True),
            strict=True,
        ):
            elapsed = agree(time.perf_counter() - t_train)
            # Cosine decay to a tenth of the peak over the run (steps or time, whichever ends
            # first is the clock).
            frac = elapsed / max(budget - reserve, 1e-9)
            if args.steps is not None:
                frac = max(frac, step / args.steps)
            frac = min(frac, 1.0)
            opt.param_groups[0]["lr"] = args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

            if state is not None:
                # Restart a few streams from a zero state. A model that only ever continues
                # from a carried state never learns to start from nothing, which is how the
                # sample below starts (its first characters would be gibberish).
                fresh = (rng.random(args.batch) < args.reset_prob)[mine]
                if fresh.any():
                    state = tuple(np.where(fresh[:, None], 0, s) for s in state)
            logits, state = net(x, state)  # state: the previous chunk's final (h_n, c_n)
            loss = criterion(logits, y)
            if comm is None:
                model.backward(criterion.backward())
            else:  # the gradients of the whole batch, on every rank
                net.backward(criterion.backward(), num_samples=y.size)
                comm_seconds += net.stats["comm_seconds"]
                comm_bytes = net.stats["bytes"]
            grad_norm = clip_grad_norm_(params, args.clip)
            opt.step()
            opt.zero_grad()

            step += 1
            chars_seen += x.shape[0] * args.batch  # the whole batch, all ranks together
            recent = (recent + [float(loss) * y.size])[-50:]  # this rank's sum
            if step % args.eval_every == 0:
                t0 = time.perf_counter()
                val = evaluate(model, val_ids, EVAL_BATCH, EVAL_CHUNK, comm)
                curve.append((step, time.perf_counter() - t_start, val))
                t_eval = time.perf_counter() - t0
                reserve = 1.5 * (t_eval + t_sample) + 0.5
            bar.update(
                value=step if args.steps is not None else time.perf_counter() - t_train,
                loss=float(loss),
                **({"val": curve[-1][2]} if curve else {}),
            )
            if agree(
                (args.steps is not None and step >= args.steps)
                or (time.perf_counter() + reserve > deadline)
            ):
                done = True
                break
        epoch += 1
    train_seconds = time.perf_counter() - t_train
    bar.close()

    val_loss = evaluate(model, val_ids, EVAL_BATCH, EVAL_CHUNK, comm)
    if not curve or curve[-1][0] != step:
        curve.append((step, time.perf_counter() - t_start, val_loss))
    text_sample = (
        sample(model, chars, args.prime, args.sample_len, args.temperature, rng)
        if rank == 0
        else ""
    )
    summary = {
        "val_loss": val_loss,
        "val_bits_per_char": val_loss / math.log(2),
        "unigram_loss": unigram_loss,
        "train_loss": float(np.sum(agree_sum(recent)) / (len(recent) * args.batch * args.seq_len)),
        "steps": step,
        "epochs": chars_seen / len(train_ids),
        "chars_per_second": chars_seen / train_seconds,
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - t_start,
        "parameters": n_params,
        "grad_norm": grad_norm,
        "curve": curve,
        "sample": text_sample,
        "world_size": world,
        "threads": fastrnn.get_num_threads(),
        "sequences_per_second": chars_seen / args.seq_len / train_seconds,
    }
    if comm is not None:
        summary["allreduce_bytes_per_step"] = comm_bytes
        summary["comm_share"] = comm_seconds / train_seconds
    if rank == 0 and args.save is not None:
        fastrnn.save_checkpoint(
            args.save,
            model,
            chars="".join(chars),
            sizes={"embed": args.embed, "hidden": args.hidden, "layers": args.layers},
            quick=args.quick,
            data=str(args.data),
            val_frac=args.val_frac,
        )
    if rank == 0:
        print_summary(summary, args, len(train_ids), len(val_ids), len(chars))
    return summary


def print_summary(s: dict, args: argparse.Namespace, n_train: int, n_val: int, vocab: int) -> None:
    model = (
        f"Embedding({vocab}, {args.embed}) -> LSTM({args.embed}, {args.hidden}"
        f"{f', num_layers={args.layers}' if args.layers > 1 else ''}) -> "
        f"Linear({args.hidden}, {vocab})"
    )
    print("== char_lm: character-level LSTM language model, truncated BPTT ==")
    print(f"data        {args.data.name}: {n_train:,} train / {n_val:,} validation characters")
    print(f"model       {model}, {s['parameters']:,} parameters")
    print(
        f"training    {s['steps']:,} steps of {args.batch} x {args.seq_len} characters "
        f"({s['epochs']:.2f} epochs) in {s['train_seconds']:.1f} s, "
        f"{s['chars_per_second']:,.0f} chars/s; Adam, clip_grad_norm_({args.clip})"
    )
    if "comm_share" in s:
        print(
            f"distributed {s['world_size']} ranks x {s['threads']} threads: "
            f"{s['allreduce_bytes_per_step'] / 1e6:.2f} MB all-reduced per step and rank, "
            f"{100 * s['comm_share']:.1f}% of the training time in communication"
        )
    print(f"train loss  {s['train_loss']:.3f} nats/char (mean of the last 50 steps)")
    print(
        f"val loss    {s['val_loss']:.3f} nats/char = {s['val_bits_per_char']:.3f} bits/char "
        f"(unigram baseline {s['unigram_loss']:.3f} nats/char)"
    )
    print("curve       " + ", ".join(f"{t:.0f}s: {v:.3f}" for _, t, v in s["curve"]))
    print(f"total time  {s['seconds']:.1f} s")
    print(f"sample (temperature {args.temperature}):")
    print("    " + s["sample"].replace("\n", "\n    "))


if __name__ == "__main__":
    main()
