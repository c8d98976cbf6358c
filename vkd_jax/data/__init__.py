"""Datasets (TFDS builders) and the tf.data input pipeline.

Importing `vkd_jax.data.synthetic` registers the built-in `synthetic_actions`
TFDS builder; `vkd_jax.data.pipeline` turns any TFDS video dataset into
batches of clips.
"""
