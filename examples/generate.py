"""Generate text from the char-LM example's model, one character at a time, with ``LSTM.step``.

``examples/char_lm.py --save model.npz`` trains the model and writes it; this script reads it
back and streams characters: the prime text is fed as one chunk, then each sampled character
is fed back as one step (``(B, I) = (1, embed)``), the LSTM's ``(h, c)`` carried from call to
call. No call re-reads the text so far, so each character costs one step of the network.

    python examples/char_lm.py --save model.npz
    python examples/generate.py --checkpoint model.npz --length 500

Without ``--checkpoint`` it first trains a tiny model (``char_lm.py --quick``) for a smoke test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import fastrnn

try:  # run as a script: examples/ is on sys.path
    import char_lm
except ImportError:  # imported as examples.generate
    from examples import char_lm


def load_model(path: Path) -> tuple[char_lm.CharLM, list[str], dict]:
    """The CharLM saved by ``char_lm.py --save``, its vocabulary and the saved extras."""
    saved = fastrnn.checkpoint.read_extra(path)  # the sizes, to build the model first
    sizes, chars = saved["sizes"], list(saved["chars"])
    model = char_lm.CharLM(
        len(chars), sizes["embed"], sizes["hidden"], sizes["layers"], np.random.default_rng(0)
    )
    extra = fastrnn.load_checkpoint(path, model)
    return model.eval(), chars, extra


def generate(
    model: char_lm.CharLM,
    chars: list[str],
    prime: str,
    length: int,
    temperature: float,
    rng: np.random.Generator,
) -> str:
    """``prime`` and ``length`` characters sampled after it, one ``LSTM.step`` each."""
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([[index[c]] for c in prime if c in index] or [[0]])  # (K, 1)
    y, state = model.lstm.step(model.embed(ids))  # the prime as one chunk: (K, 1, H)
    logits = model.head(y[-1])  # (1, V)
    out = []
    for _ in range(length):
        z = logits[0].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        nxt = int(rng.choice(len(chars), p=p / p.sum()))
        out.append(chars[nxt])
        y, state = model.lstm.step(model.embed(np.array([nxt]))[None][0], state)  # (1, H)
        logits = model.head(y)
    return prime + "".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--checkpoint", type=Path, default=None, help="from char_lm.py --save")
    ap.add_argument("--length", type=int, default=300, help="characters to generate")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    ap.add_argument("--prime", default="ROMEO:\n", help="text the sample starts from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-steps", type=int, default=3, help="without --checkpoint: steps of a quick model"
    )
    ap.add_argument(
        "--evaluate",
        action="store_true",
        help="also report the validation loss of the model and of its int8 version "
        "(fastrnn.quantize_dynamic) on the text it was trained on",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Load (or quickly train) the model, generate, print and return a summary."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.checkpoint
        if path is None:
            path = Path(tmp) / "char_lm.npz"
            char_lm.main(
                [
                    "--quick",
                    "--steps",
                    str(args.train_steps),
                    "--sample-len",
                    "1",
                    "--save",
                    str(path),
                ]
            )
        model, chars, saved = load_model(path)
    t0 = time.perf_counter()
    text = generate(
        model, chars, args.prime, args.length, args.temperature, np.random.default_rng(args.seed)
    )
    seconds = time.perf_counter() - t0
    summary = {
        "text": text,
        "chars": args.length,
        "ms_per_char": 1e3 * seconds / max(args.length, 1),
    }
    print(text)
    print(f"\n{args.length} characters in {seconds:.3f} s ({summary['ms_per_char']:.3f} ms/char)")
    if args.evaluate:
        ids, _ = char_lm.load_text(Path(saved["data"]), saved["quick"])
        val = ids[-int(len(ids) * saved["val_frac"]) :]
        # int8="always": the integer kernels whatever the CPU (auto runs float32 without VNNI)
        int8 = fastrnn.quantize_dynamic(model, int8="always")
        for name, m in (("float32", model), ("int8", int8)):
            loss = char_lm.evaluate(m, val, char_lm.EVAL_BATCH, char_lm.EVAL_CHUNK)
            summary[f"val_loss_{name}"] = loss
            print(f"validation loss {name}: {loss:.4f} nats/char")
    return summary


if __name__ == "__main__":
    main()
