"""Many-to-one classification: handwritten digits read row by row by a recurrent network.

scikit-learn ships a small real data set, 1,797 handwritten digits of 8 x 8 pixels
(``sklearn.datasets.load_digits``, no download). Each image is read as a sequence of its 8 rows
(T = 8 steps of I = 8 pixels); the recurrent layer's output after the last row goes through a
fully connected layer, and a softmax cross-entropy loss trains the whole network. The summary
reports the accuracy on a held-out quarter of the images (above 90%, typically about 97%).

Run ``python examples/digits.py`` (a few seconds; needs ``pip install scikit-learn``, or
``pip install -e ".[examples]"``) or ``python examples/digits.py --quick --epochs 1``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastrnn
import fastrnn.cells
from fastrnn.nn import CrossEntropyLoss, Linear, Module
from fastrnn.optim import Adam, clip_grad_norm_

try:  # run as a script: examples/ is on sys.path
    from _progress import ProgressBar
except ImportError:  # imported as examples.digits
    from examples._progress import ProgressBar

CELLS = {name: cell.title for name, cell in fastrnn.cells.CELLS.items()}


class RowReader(Module):
    """Recurrent layer over the rows, then ``Linear`` on its last output: logits (B, 10)."""

    def __init__(self, cell: str, hidden: int, n_classes: int, rng: np.random.Generator) -> None:
        super().__init__()
        seeds = rng.integers(2**31, size=2)
        layer = getattr(fastrnn, CELLS[cell])
        self.rnn = layer(8, hidden, batch_first=True, seed=int(seeds[0]))
        self.fc = Linear(hidden, n_classes, seed=int(seeds[1]))

    def forward(self, images: np.ndarray) -> np.ndarray:
        """``images`` (B, 8, 8), batch first: row t of every image is time step t."""
        out, _ = self.rnn(images)  # (B, T, H); the state is not needed
        self._out_shape = out.shape
        return self.fc(out[:, -1])  # many-to-one: only the last step is read

    def backward(self, dlogits: np.ndarray) -> None:
        dout = np.zeros(self._out_shape, dlogits.dtype)
        dout[:, -1] = self.fc.backward(dlogits)  # earlier outputs were not used: zero gradient
        self.rnn.backward(dout)


def load_data(seed: int, quick: bool):
    """Pixels scaled to [0, 1] as float32 (N, 8, 8), labels, split 75/25 stratified."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "this example needs scikit-learn: pip install scikit-learn "
            '(or pip install -e ".[examples]")'
        ) from exc
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    if quick:
        x, y = x[:300], y[:300]
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def accuracy(model: RowReader, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = model(x).argmax(axis=1)
    model.train()
    return float((pred == y).mean())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--cell", choices=sorted(CELLS), default="lstm", help="recurrent layer")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3, help="Adam's learning rate")
    ap.add_argument("--clip", type=float, default=5.0, help="max global gradient norm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="300 images, a smaller network")
    args = ap.parse_args(argv)
    if args.quick:
        args.hidden = 16
    return args


def main(argv: list[str] | None = None) -> dict:
    """Train and evaluate; print and return the summary."""
    t_start = time.perf_counter()
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    x_train, x_test, y_train, y_test = load_data(args.seed, args.quick)

    model = RowReader(args.cell, args.hidden, 10, rng)
    params = list(model.parameters())
    opt = Adam(params, lr=args.lr)
    criterion = CrossEntropyLoss()

    bar = ProgressBar(args.epochs, desc="digits", unit=" epochs")
    losses = []
    for _ in range(args.epochs):
        order = rng.permutation(len(x_train))
        epoch_loss = 0.0
        for start in range(0, len(order), args.batch):
            idx = order[start : start + args.batch]
            loss = criterion(model(x_train[idx]), y_train[idx])
            model.backward(criterion.backward())
            clip_grad_norm_(params, args.clip)
            opt.step()
            opt.zero_grad()
            epoch_loss += float(loss) * len(idx)
        losses.append(epoch_loss / len(order))
        bar.update(loss=losses[-1])
    bar.close()

    summary = {
        "train_accuracy": accuracy(model, x_train, y_train),
        "test_accuracy": accuracy(model, x_test, y_test),
        # the same model with int8 weights (fastrnn.quantize_dynamic), inference only
        # int8="always": also where the default ("auto") keeps float32 (small hidden sizes,
        # as --quick's 16)
        "test_accuracy_int8": accuracy(
            fastrnn.quantize_dynamic(model, int8="always"), x_test, y_test
        ),
        "train_loss": losses[-1],
        "n_train": len(y_train),
        "n_test": len(y_test),
        "epochs": args.epochs,
        "seconds": time.perf_counter() - t_start,
    }
    print(f"== digits: {CELLS[args.cell]} reading 8x8 digit images row by row (T=8, I=8) ==")
    print(
        f"data      sklearn load_digits: {summary['n_train']} train / {summary['n_test']} test "
        "images, 10 classes"
    )
    print(
        f"model     {CELLS[args.cell]}(8, {args.hidden}) -> last step -> Linear({args.hidden}, 10)"
        " -> softmax cross-entropy"
    )
    print(
        f"training  {args.epochs} epochs, batch {args.batch}, Adam(lr={args.lr}), "
        f"final train loss {summary['train_loss']:.4f}"
    )
    print(
        f"accuracy  train {100 * summary['train_accuracy']:.1f}%, "
        f"test {100 * summary['test_accuracy']:.1f}% "
        f"(int8 weights: {100 * summary['test_accuracy_int8']:.1f}%)"
    )
    print(f"time      {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
