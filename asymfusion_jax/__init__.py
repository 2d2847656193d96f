"""asymfusion_jax: AsymFusion (Wang et al., ACM MM 2020) in JAX/Flax."""

__version__ = '0.1.0'
