"""A dependency-free text progress bar on stderr, shared by the examples.

On a terminal the bar redraws itself in place (at most ten times a second). When stderr is not a
terminal (a log file, CI), it writes a plain line every tenth of the way instead, so that logs stay
readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``[#######.........]  45%  450/1000  12.3s  loss=1.234``.

    Parameters
    ----------
    total : float
        Value of the counter at completion (steps, epochs or seconds).
    desc : str
        Label printed before the bar.
    unit : str
        Unit of the counter, printed after it (``"s"`` for a time budget).
    stream : file, default=sys.stderr
    width : int, default=30
        Number of characters of the bar itself.
    """

    def __init__(
        self,
        total: float,
        desc: str = "",
        unit: str = "",
        stream: TextIO | None = None,
        width: int = 30,
    ) -> None:
        self.total = max(float(total), 1e-12)
        self.desc = desc
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.n = 0.0
        self.postfix = ""
        self._start = time.perf_counter()
        self._last_draw = -1.0
        self._last_tenth = -1
        self._prev_len = 0
        self._drawn_n: float | None = None
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: float = 1.0, *, value: float | None = None, **postfix: float | str) -> None:
        """Advance the counter by ``n`` (or set it to ``value``) and show ``postfix`` values."""
        self.n = float(value) if value is not None else self.n + n
        if postfix:
            self.postfix = "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items()
            )
        self._draw(final=False)

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw(final=True)
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, final: bool) -> None:
        now = time.perf_counter()
        frac = min(max(self.n / self.total, 0.0), 1.0)
        if self._tty:
            if not final and now - self._last_draw < 0.1:
                return
        else:
            tenth = int(frac * 10)
            if not final and tenth == self._last_tenth:
                return
            self._last_tenth = tenth
        if final and self._drawn_n == self.n:
            return
        self._last_draw = now
        self._drawn_n = self.n
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        count = f"{self.n:.0f}/{self.total:.0f}{self.unit}"
        line = f"{self.desc} [{bar}] {100 * frac:3.0f}%  {count}  {now - self._start:.1f}s"
        if self.postfix:
            line += "  " + self.postfix
        if self._tty:  # redraw in place; pad to erase a longer previous line
            self.stream.write("\r" + line.ljust(self._prev_len))
            self._prev_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
