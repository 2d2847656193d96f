"""predict's progress bar: images done, images per second (compilation excluded), time left.

On a terminal the line is redrawn in place; otherwise (a log file) a line is printed at most
every `every` seconds, and at the end.
"""

import datetime
import sys
import time

BAR = 20  # Characters of the bar.


class Progress:
  """Reports `done` of `total` images; compile time given to exclude() does not count."""

  def __init__(self, total: int, stream=None, every: float = 10.0):
    self.total, self.every = total, every
    self.stream = sys.stderr if stream is None else stream
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.start = time.perf_counter()
    self.excluded = 0.0
    self.done = 0
    self._last = -float('inf')
    self._printed = -1  # The count of the last line printed (not on a terminal).

  def exclude(self, seconds: float) -> None:
    self.excluded += seconds

  def rate(self) -> float:
    busy = time.perf_counter() - self.start - self.excluded
    return self.done / busy if busy > 0 else 0.0

  def line(self) -> str:
    rate = self.rate()
    filled = BAR * self.done // max(self.total, 1)
    text = (f'predict: [{"#" * filled}{"." * (BAR - filled)}] {self.done}/{self.total} images, '
            f'{rate:.2f} images/s')
    if 0 < self.done < self.total and rate > 0:
      text += f', {datetime.timedelta(seconds=round((self.total - self.done) / rate))} left'
    return text

  def update(self, done: int) -> None:
    self.done = done
    now = time.perf_counter()
    if self.tty:
      self.stream.write('\r' + self.line() + '\x1b[K')
      self.stream.flush()
    elif now - self._last >= self.every:
      self._last, self._printed = now, done
      print(self.line(), file=self.stream, flush=True)

  def finish(self) -> None:
    if self.tty:
      self.stream.write('\r' + self.line() + '\x1b[K\n')
      self.stream.flush()
    elif self._printed != self.done:
      print(self.line(), file=self.stream, flush=True)
