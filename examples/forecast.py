"""Many-to-one forecasting: tomorrow's price from the last days' price, market index and news.

The data are synthetic, generated below so that everything about them is known:

* a market index follows a geometric random walk (daily log-returns ~ N(0.03%, 1%));
* news mentions of the company are Poisson counts around 2 a day; on about 3% of the days a story
  breaks, and the count jumps and decays back over the next days ("buzz");
* the company's price moves each day by a log-return made of
  - the market's move of the day before, with a sensitivity (beta) that rises with attention: a
    stock in the news follows the market more closely, ``(0.4 + 0.5 * attention) * m[t-1]``;
  - a partial reversal of its own move of the day before, ``-0.15 * r[t-1]``;
  - a drift, up by 0.12% a day, down by 0.3% per unit of attention while the company is in the
    news, ``0.0012 - 0.003 * attention``;
  - noise, N(0, 0.5%),

  where ``attention = min(news[t-1] / 10, 2)``.

The task is to predict day t's price from the ``--window`` days before it. The inputs per day are
the price's log-return, the index's log-return and log(1 + news mentions), standardized; a GRU reads
the window and a linear layer on its last output predicts the day's log-return (MSE loss), which
gives the price ``P[t] = P[t-1] * exp(r)``. Two baselines: the naive forecast (tomorrow's price is
today's price, the best forecast for a pure random walk) and a linear regression on the same
window. The market-times-attention term is beyond a linear model; the GRU learns it.

Run ``python examples/forecast.py`` (well under a minute) or
``python examples/forecast.py --quick --epochs 1`` for a smoke test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastrnn
from fastrnn.nn import Linear, Module, MSELoss
from fastrnn.optim import Adam, clip_grad_norm_

try:  # run as a script: examples/ is on sys.path
    from _progress import ProgressBar
except ImportError:  # imported as examples.forecast
    from examples._progress import ProgressBar


def make_market(n_days: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Simulate ``n_days`` of index level, news mentions and price (see the module docstring)."""
    m = rng.normal(3e-4, 0.01, n_days)  # index log-returns
    index = 1000.0 * np.exp(np.cumsum(m))
    story = rng.random(n_days) < 0.03
    buzz = np.zeros(n_days)
    for t in range(1, n_days):
        buzz[t] = 0.6 * buzz[t - 1] + 12.0 * story[t]
    news = rng.poisson(2.0 + 3.0 * buzz)
    attention = np.minimum(news / 10.0, 2.0)
    r = np.zeros(n_days)  # price log-returns
    noise = rng.normal(0.0, 0.005, n_days)
    for t in range(1, n_days):
        a = attention[t - 1]
        r[t] = (0.4 + 0.5 * a) * m[t - 1] - 0.15 * r[t - 1] + 0.0012 - 0.003 * a + noise[t]
    price = 50.0 * np.exp(np.cumsum(r))
    return {"index": index, "news": news, "price": price, "r": r, "m": m}


def make_windows(market: dict[str, np.ndarray], window: int):
    """Inputs (N, window, 3) of days t-window..t-1, the target log-return of day t, and P[t-1]."""
    feats = np.stack([market["r"], market["m"], np.log1p(market["news"])], axis=1)
    days = np.arange(window + 1, len(feats))  # day 0 has no return: skip it
    x = np.stack([feats[t - window : t] for t in days])
    return x, market["r"][days], market["price"][days - 1], market["price"][days]


class Forecaster(Module):
    """``GRU(3, H)`` over the window, then ``Linear(H, 1)`` on the last step: (B, T, 3) -> (B,)."""

    def __init__(self, hidden: int, rng: np.random.Generator) -> None:
        super().__init__()
        seeds = rng.integers(2**31, size=2)
        self.gru = fastrnn.GRU(3, hidden, batch_first=True, seed=int(seeds[0]))
        self.head = Linear(hidden, 1, seed=int(seeds[1]))

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, _ = self.gru(x)
        self._out_shape = out.shape
        return self.head(out[:, -1])[:, 0]

    def backward(self, dpred: np.ndarray) -> None:
        dout = np.zeros(self._out_shape, dpred.dtype)
        dout[:, -1] = self.head.backward(dpred[:, None])
        self.gru.backward(dout)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--days", type=int, default=5000, help="length of the simulated history")
    ap.add_argument("--window", type=int, default=10, help="days the model reads")
    ap.add_argument("--hidden", type=int, default=32, help="GRU hidden size")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="400 days, a smaller network")
    args = ap.parse_args(argv)
    if args.quick:
        args.days, args.hidden = 400, 8
    return args


def main(argv: list[str] | None = None) -> dict:
    """Simulate, fit the baselines and the GRU; print and return the summary."""
    t_start = time.perf_counter()
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    market = make_market(args.days, rng)
    x, r, prev_price, price = make_windows(market, args.window)

    # Chronological split: train on the past, choose the epoch on the next 15%, test on the last.
    n = len(x)
    i_val, i_test = int(0.7 * n), int(0.85 * n)
    tr, va, te = slice(0, i_val), slice(i_val, i_test), slice(i_test, n)
    mu, sd = x[tr].reshape(-1, 3).mean(axis=0), x[tr].reshape(-1, 3).std(axis=0)
    xs = ((x - mu) / sd).astype(np.float32)
    r_mu, r_sd = r[tr].mean(), r[tr].std()
    ys = ((r - r_mu) / r_sd).astype(np.float32)

    def price_rmse(r_hat: np.ndarray, part: slice) -> float:
        return float(np.sqrt(np.mean((prev_price[part] * np.exp(r_hat) - price[part]) ** 2)))

    def return_mse(r_hat: np.ndarray, part: slice) -> float:
        return float(np.mean((r_hat - r[part]) ** 2))

    results: dict[str, dict[str, float]] = {}

    def record(name: str, r_hat_test: np.ndarray) -> None:
        results[name] = {
            "price_rmse": price_rmse(r_hat_test, te),
            "return_mse": return_mse(r_hat_test, te),
            "r2": 1.0 - return_mse(r_hat_test, te) / float(np.var(r[te])),
        }

    # Baseline 1: tomorrow's price is today's (a zero return).
    record("naive (yesterday's price)", np.zeros(te.stop - te.start))
    # Baseline 2: least squares on the same standardized window, flattened, plus an intercept.
    design = np.hstack([xs.reshape(n, -1), np.ones((n, 1), np.float32)]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design[tr], ys[tr], rcond=None)
    record("linear regression", (design[te] @ coef) * r_sd + r_mu)

    model = Forecaster(args.hidden, rng)
    params = list(model.parameters())
    opt = Adam(params, lr=args.lr)
    criterion = MSELoss()

    def predict(part: slice) -> np.ndarray:
        model.eval()
        out = model(xs[part]).astype(np.float64) * r_sd + r_mu
        model.train()
        return out

    best = (np.inf, 0, model.state_dict())
    bar = ProgressBar(args.epochs, desc="forecast", unit=" epochs")
    for epoch in range(args.epochs):
        order = rng.permutation(i_val)
        for start in range(0, i_val, args.batch):
            idx = order[start : start + args.batch]
            criterion(model(xs[idx]), ys[idx])
            model.backward(criterion.backward())
            clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
        val = return_mse(predict(va), va)
        if val < best[0]:
            best = (val, epoch + 1, model.state_dict())
        bar.update(val_mse=val / r[va].var())
    bar.close()
    model.load_state_dict(best[2])
    record(f"GRU({args.hidden}), epoch {best[1]} (best on validation)", predict(te))

    summary = {
        "results": results,
        "n_train": i_val,
        "n_test": n - i_test,
        "seconds": time.perf_counter() - t_start,
    }
    print("== forecast: tomorrow's price from the last days' price, market index and news ==")
    print(
        f"data      {args.days} simulated days; windows of {args.window} days; "
        f"{i_val} train / {i_test - i_val} validation / {n - i_test} test (chronological)"
    )
    print(
        f"price     {market['price'].min():.2f} .. {market['price'].max():.2f} over the history, "
        f"{price[te].min():.2f} .. {price[te].max():.2f} over the test days; "
        f"{market['news'].mean():.1f} news mentions a day on average, up to {market['news'].max()}"
    )
    print(f"{'model':<44}{'price RMSE':>12}{'return MSE':>14}{'R^2 (return)':>14}")
    for name, v in results.items():
        print(f"{name:<44}{v['price_rmse']:>12.4f}{v['return_mse']:>14.3e}{v['r2']:>14.3f}")
    print(f"time      {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
