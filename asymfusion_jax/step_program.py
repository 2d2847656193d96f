"""A config's train or eval step as a program to time, compile or inspect, on synthetic data.

build_step gives the jitted step training (or evaluation) runs, with the library's own state,
optimiser and shardings over the ('data',) mesh, and its arguments: a synthetic batch with the
pipeline's shapes and dtypes (Task.synthetic_batch) and the initial state. experiments/
benchmark.py times it, experiments/profile_step.py traces it, and the tests lower it to check
what it computes in (asymfusion_jax.hlo_summary).
"""

from asymfusion_jax import sharding, tasks


def synthetic_batch(config, mode: str, seed: int = 0) -> dict:
  """This process's rows of a config.batch_size batch of the config's task ('train' or 'eval'),
  random values with the shapes and dtypes of the data pipeline's batches."""
  return tasks.get(config).synthetic_batch(config, mode, seed)


def build_step(config, mode: str, seed: int = 0, abstract: bool = False):
  """(jitted step, its arguments) for the config: the library's own step, state and sharding.

  mode: 'train' (the step training runs, donating its state) or 'eval' (the evaluator's step).
  abstract=True gives the train state (or the eval variables) as shapes and dtypes only
  (jax.eval_shape; the step's in_shardings place it), which is enough to lower and compile the
  step without initialising anything. The synthetic batch is this process's share of the
  global batch, which must divide over the devices.
  """
  sharding.check_batch_size(config.batch_size)
  task = tasks.get(config)
  mesh = sharding.make_mesh()
  batch = sharding.global_batch(mesh, task.synthetic_batch(config, mode, seed))
  return task.build_step(config, mesh, mode, batch, abstract)
