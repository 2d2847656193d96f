"""One config file per experiment; each defines get_config() (demo.py takes a variant name).

These files belong to the repository, not to the installed `asymfusion_jax` package. Load them
from any working directory with asymfusion_jax.config_lib: get_config('demo:rgb') by name, or
load('configs/demo.py:rgb') by path (relative to the working directory, else to the repository
root); the command lines take the same paths in --config=. The `import configs` form works only
with the repository root on sys.path, which is why the tests can use it.
"""
