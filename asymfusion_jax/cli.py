"""What every command line of the package shares: an error is one line, and exit status 1.

Each CLI's `__main__` block runs its main through `run` (absl flags) or `guard` (argparse, with
`ArgumentParser`). An exception that reaches them does not print a traceback: stderr gets one
line, `<name>: <what went wrong>`, naming the file, key, checkpoint or step at fault and what to
do (the library's messages say both; for OS errors `describe` adds the advice), and the process
exits with status 1. The traceback goes to the debug log: `--verbosity=1` shows it above that
line. An exception that is not one of the package's own or an OSError, ValueError or
FloatingPointError is a bug rather than a bad input; its line says so and keeps its type.

  if __name__ == '__main__':
    cli.run(main, 'export')
"""

import argparse
import errno
import functools
import sys
import traceback
from typing import Callable

from absl import app, flags, logging

# What to do about an OSError on a path a user gave, by errno.
_OS_ADVICE = {
    errno.ENOENT: 'check the path',
    errno.ENOTDIR: 'a part of the path is a file, not a folder: choose another path',
    errno.EEXIST: 'a file of that name is in the way: choose another path',
    errno.EISDIR: 'it is a folder where a file belongs: choose another path',
    errno.EACCES: 'this user may not use it: choose another path or change its permissions',
    errno.EPERM: 'this user may not use it: choose another path or change its permissions',
    errno.EROFS: 'the file system is read-only: choose a writable path',
    errno.ENOSPC: 'the disk is full: free some space or choose another disk',
    errno.EDQUOT: 'the disk quota is used up: free some space or choose another disk',
}

# Exception types that report bad input (a path, a file, a value), not a bug of the package.
_INPUT_ERRORS = (OSError, ValueError, FloatingPointError, app.UsageError)

# An unexpected error's message is cut to this many characters (XLA's run to pages).
_UNEXPECTED_LIMIT = 300


def _expected(error: BaseException) -> bool:
  return (isinstance(error, _INPUT_ERRORS)
          or type(error).__module__.split('.')[0] == 'asymfusion_jax')


def describe(error: BaseException) -> str:
  """`error` in one line: the fault, and what to do about it where the type tells."""
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    where = error.filename if error.filename2 is None else f'{error.filename} -> {error.filename2}'
    advice = _OS_ADVICE.get(error.errno)
    return f'{where}: {error.strerror}' + (f'; {advice}' if advice else '')
  text = ' '.join(line.strip() for line in str(error).splitlines() if line.strip())
  if isinstance(error, app.UsageError):
    return f'{text} (--help describes the flags)'
  if _expected(error):
    return text or type(error).__name__
  if len(text) > _UNEXPECTED_LIMIT:
    text = text[:_UNEXPECTED_LIMIT] + ' ...'
  return (f'unexpected {type(error).__name__}: {text or "(no message)"} (a bug; --verbosity=1 '
          'shows its traceback)')


def guard(main: Callable, name: str) -> Callable:
  """`main`, whose exceptions exit with one line `name: describe(error)` and status 1.

  SystemExit (a main's own exit status or message) and KeyboardInterrupt pass through.
  """
  @functools.wraps(main)
  def guarded(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except (SystemExit, KeyboardInterrupt):
      raise
    except Exception as e:  # pylint: disable=broad-except  # Every error: one line.
      logging.debug('%s', traceback.format_exc().rstrip())
      sys.exit(f'{name}: {describe(e)}')
  return guarded


def flag_error(error: Exception) -> str:
  """absl's flag error in one line: its first line, and its last when a traceback is between."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if len(lines) > 1 and any(line.startswith('Traceback') for line in lines):
    return f'{lines[0]} {lines[-1]}'
  return ' '.join(lines)


def parse_flags(argv: list[str], name: str) -> list[str]:
  """absl's flag parsing, with an error (a missing --out, a bad --format) in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'{name}: {flag_error(e)} (--helpfull lists the flags)')


def run(main: Callable, name: str, flags_parser: Callable | None = None,
        argv: list[str] | None = None) -> None:
  """absl's app.run(main), with the flag errors and main's errors one line each (`guard`).

  Args:
    main: the CLI's main(argv).
    name: what starts each error line: the command, or what failed ('export failed, nothing
      written').
    flags_parser: replaces `parse_flags` (main.py's also names config errors).
    argv: the command line (default sys.argv); tests run several in one process.
  """
  parser = flags_parser or functools.partial(parse_flags, name=name)
  app.run(guard(main, name), argv=argv, flags_parser=parser)


class ArgumentParser(argparse.ArgumentParser):
  """argparse, whose usage errors go through `guard` (one line, status 1) instead of printing
  the usage and exiting with 2; and which takes absl's --verbosity, so that --verbosity=1 shows
  a failure's traceback as in the absl CLIs."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument('--verbosity', '-v', type=int, default=None,
                      help='Logging verbosity (absl\'s); 1 also shows the traceback of an error.')

  def parse_args(self, *args, **kwargs):  # pylint: disable=signature-differs
    parsed = super().parse_args(*args, **kwargs)
    if parsed.verbosity is not None:
      logging.set_verbosity(parsed.verbosity)
    return parsed

  def error(self, message):
    raise app.UsageError(message)
