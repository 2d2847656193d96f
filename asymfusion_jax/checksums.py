"""SHA-256 checksums of a checkpoint's files, recorded when it is written, checked before a restore.

orbax does not detect data that changed on disk: only the index of a zarr3 shard carries a
CRC32C, so a data file overwritten in place (a failing disk, a bad copy, a second writer) restores
without an error and trains or evaluates broken weights. So every checkpoint directory this
package writes gets a record, CHECKSUMS_FILE, with the size and SHA-256 of each of its files,
written atomically once its data is complete; `verify` recomputes them before a restore.

A checkpoint without a record is not trusted: it was not completely written (a run killed while
saving it), its record was deleted, or it predates checksums. `verify` fails on it as on a file
that changed, so it is handled like any unreadable checkpoint.

orbax's commit bookkeeping at the top of a checkpoint (COMMIT_FILES: the step metadata, which
orbax updates with its commit time, and the commit marker) is written when orbax commits, after
the record, so the record leaves it out; records written before it did list it, and those
entries are still checked.
"""

import hashlib
import json
import os

from etils import epath

CHECKSUMS_FILE = 'asymfusion_checksums.json'
COMMIT_FILES = ('_CHECKPOINT_METADATA', 'commit_success.txt')
_FORMAT = 1
_CHUNK = 1 << 22


class ChecksumError(ValueError):
  """A checkpoint's files differ from the checksums recorded when it was written, or it has no
  record of them."""


def _digest(path: epath.Path) -> str:
  sha = hashlib.sha256()
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK):
      sha.update(chunk)
  return sha.hexdigest()


def _files(directory: epath.Path) -> dict[str, epath.Path]:
  """Every file under directory except the record, by its '/'-separated relative path."""
  files = {}
  for root, _, names in directory.walk():
    for name in names:
      relative = (root / name).relative_to(directory).as_posix()
      if relative != CHECKSUMS_FILE:
        files[relative] = root / name
  return files


def compute(directory) -> dict[str, dict]:
  """{relative path: {'size', 'sha256'}} of every file under `directory` but COMMIT_FILES."""
  directory = epath.Path(directory)
  return {relative: {'size': path.stat().length, 'sha256': _digest(path)}
          for relative, path in sorted(_files(directory).items())
          if relative not in COMMIT_FILES}


def write(directory, files: dict[str, dict] | None = None) -> dict[str, dict]:
  """Records the checksums of the files under `directory`, replacing the record atomically.

  Call it once the checkpoint's data is complete on disk, from one process only.

  Args:
    directory: the checkpoint directory.
    files: the entries to record (compute's format) when they are known already (the files
      are hard links to, or copies of, files checksummed before); default: compute(directory).

  Returns:
    The recorded entries.
  """
  directory = epath.Path(directory)
  files = compute(directory) if files is None else dict(sorted(files.items()))
  temporary = directory / f'{CHECKSUMS_FILE}.tmp{os.getpid()}'
  temporary.write_text(json.dumps({'format': _FORMAT, 'files': files}, indent=1))
  temporary.replace(directory / CHECKSUMS_FILE)
  return files


def verify(directory) -> None:
  """Checks the files under `directory` against its record.

  Raises:
    ChecksumError: there is no record, or naming the first file that is missing, extra, of
      another size or content, or the record itself if it cannot be read.
  """
  directory = epath.Path(directory)
  manifest = directory / CHECKSUMS_FILE
  if not manifest.exists():
    raise ChecksumError(f'{CHECKSUMS_FILE} is missing, so its files cannot be trusted: it was '
                        'not completely written, its record was deleted, or it predates '
                        'checksums')
  try:
    recorded = json.loads(manifest.read_text())['files']
    recorded = {str(k): (int(v['size']), str(v['sha256'])) for k, v in recorded.items()}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ChecksumError(f'the checksum record {manifest} cannot be read '
                        f'({type(e).__name__}: {e})') from e
  present = {relative: path for relative, path in _files(directory).items()
             if relative not in COMMIT_FILES or relative in recorded}
  missing = sorted(recorded.keys() - present.keys())
  if missing:
    raise ChecksumError(f'{missing[0]} is missing ({len(missing)} recorded files in all)')
  extra = sorted(present.keys() - recorded.keys())
  if extra:
    raise ChecksumError(f'{extra[0]} was not part of the checkpoint when it was written '
                        f'({len(extra)} such files in all)')
  for relative, (size, sha256) in sorted(recorded.items()):
    actual_size = present[relative].stat().length
    if actual_size != size:
      raise ChecksumError(f'{relative} has {actual_size} bytes, {size} when it was written')
    if _digest(present[relative]) != sha256:
      raise ChecksumError(f'{relative} changed since it was written (SHA-256 mismatch)')
