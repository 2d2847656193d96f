"""SHA-256 checksums of a checkpoint's files, recorded after a save and checked before a restore.

orbax does not detect data that changed on disk: only the index of a zarr3 shard carries a
CRC32C, so a data file overwritten in place (a failing disk, a bad copy, a second writer) restores
without an error and trains or evaluates broken weights. So every checkpoint directory this
package writes gets a manifest, CHECKSUMS_FILE, with the size and SHA-256 of each of its files,
written atomically once the checkpoint is complete; `verify` recomputes them before a restore.

A directory without a manifest was written before checksums were recorded (or by another tool):
`verify` reports it unverified rather than failing, so older workdirs keep working.
"""

import hashlib
import json
import os

from etils import epath

CHECKSUMS_FILE = 'asymfusion_checksums.json'
_FORMAT = 1
_CHUNK = 1 << 22


class ChecksumError(ValueError):
  """A checkpoint's files differ from the checksums recorded when it was written."""


def _digest(path: epath.Path) -> str:
  sha = hashlib.sha256()
  with path.open('rb') as f:
    while chunk := f.read(_CHUNK):
      sha.update(chunk)
  return sha.hexdigest()


def _files(directory: epath.Path) -> dict[str, epath.Path]:
  """Every file under directory except the manifest, by its '/'-separated relative path."""
  files = {}
  for root, _, names in directory.walk():
    for name in names:
      relative = (root / name).relative_to(directory).as_posix()
      if relative != CHECKSUMS_FILE:
        files[relative] = root / name
  return files


def write(directory) -> None:
  """Records the checksums of every file under `directory`, replacing the manifest atomically.

  Call it once the checkpoint is complete on disk, from one process only.
  """
  directory = epath.Path(directory)
  files = {relative: {'size': path.stat().length, 'sha256': _digest(path)}
           for relative, path in sorted(_files(directory).items())}
  temporary = directory / f'{CHECKSUMS_FILE}.tmp{os.getpid()}'
  temporary.write_text(json.dumps({'format': _FORMAT, 'files': files}, indent=1))
  temporary.replace(directory / CHECKSUMS_FILE)


def verify(directory) -> bool:
  """Checks the files under `directory` against its manifest.

  Returns:
    True if every file matches; False if there is no manifest (the checkpoint predates
    checksums, and is unverified).

  Raises:
    ChecksumError: naming the first file that is missing, extra, of another size or content, or
      the manifest itself if it cannot be read.
  """
  directory = epath.Path(directory)
  manifest = directory / CHECKSUMS_FILE
  if not manifest.exists():
    return False
  try:
    recorded = json.loads(manifest.read_text())['files']
    recorded = {str(k): (int(v['size']), str(v['sha256'])) for k, v in recorded.items()}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ChecksumError(f'the checksum manifest {manifest} cannot be read '
                        f'({type(e).__name__}: {e})') from e
  present = _files(directory)
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
  return True
