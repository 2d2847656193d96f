"""Input data: the NYUDv2 TFDS builder, a synthetic RGB-D stand-in and the train/eval pipelines.

Importing this package imports nothing heavy; TensorFlow is only loaded by the functions of
`pipeline` that build or read the TFDS dataset.
"""
