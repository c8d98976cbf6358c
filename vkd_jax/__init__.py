"""vkd_jax: knowledge distillation of video action-recognition models in JAX/Flax."""

__version__ = "0.1.0"
