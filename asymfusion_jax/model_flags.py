"""The flags that name a trained model, shared by the export and predict command lines.

A model comes from one of: a training workdir (`--workdir`, its best checkpoint or the periodic
one of `--step`, and its config.json), a converted checkpoint (`--checkpoint` with `--config`,
written by `python -m asymfusion_jax.convert`), or, where the command accepts one, an exported
artifact (`--artifact`, with its sidecar FILE.json).

  model_flags.define(artifact=True)       # in the CLI's flag definitions
  kind = model_flags.chosen(FLAGS, artifact=True)   # 'workdir', 'checkpoint' or 'artifact'
"""

from absl import app, flags

from asymfusion_jax import config_io, config_lib

_HELP = {
    'workdir': 'A training workdir: its best checkpoint (or the one of --step) and config.json.',
    'checkpoint': 'Instead of --workdir: a checkpoint written by `python -m asymfusion_jax.'
                  'convert`; needs --config.',
    'artifact': 'Instead of --workdir: an artifact written by `python -m asymfusion_jax.export` '
                '(its sidecar FILE.json beside it).',
}
_WHAT = {
    'workdir': '--workdir (a training run)',
    'checkpoint': '--checkpoint (a converted checkpoint, with --config)',
    'artifact': '--artifact (an export)',
}


def _kinds(artifact: bool) -> tuple[str, ...]:
  return ('workdir', 'checkpoint') + (('artifact',) if artifact else ())


def define(artifact: bool = False) -> None:
  """Defines --workdir, --step, --checkpoint, --config (and --artifact) on absl's FLAGS."""
  flags.DEFINE_string('workdir', None, _HELP['workdir'])
  flags.DEFINE_integer('step', None, 'With --workdir: the periodic checkpoint of this step '
                       'instead of the best one.')
  flags.DEFINE_string('checkpoint', None, _HELP['checkpoint'])
  config_lib.DEFINE_config_file('config', None, 'With --checkpoint: its config file.')
  if artifact:
    flags.DEFINE_string('artifact', None, _HELP['artifact'])


def chosen(args, artifact: bool = False) -> str:
  """Which model source the flags name; app.UsageError unless they name exactly one, fully."""
  kinds = _kinds(artifact)
  given = [kind for kind in kinds if args[kind].value]
  if len(given) != 1:
    raise app.UsageError('pass exactly one of ' + ', '.join(_WHAT[k] for k in kinds[:-1]) +
                         f' and {_WHAT[kinds[-1]]}')
  if args.step is not None and given != ['workdir']:
    raise app.UsageError('--step selects a checkpoint of a --workdir; a converted --checkpoint '
                         + ('or an --artifact ' if artifact else '') + 'has only one')
  if args.config is not None and given != ['checkpoint']:
    raise app.UsageError("--config goes with --checkpoint; a workdir's config is read from "
                         f"{config_io.CONFIG_FILE}, an artifact's from its sidecar")
  if given == ['checkpoint'] and args.config is None:
    raise app.UsageError('--checkpoint needs --config, the config file of its model')
  return given[0]
