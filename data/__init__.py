"""Data: datasets, their statistics, on-device sampling and augmentation, streaming, feeds.

``datasets`` loads in-memory splits (digits, CIFAR), ``tfds_source`` reads
TFDS datasets (offline when prepared, one error line when they cannot be),
``statistics`` fits what inputs are normalised with, ``sampling`` and
``augment`` run inside the jitted step, ``streaming`` reads ImageNet through
tf.data, ``device`` places host arrays on a mesh, ``feeds`` hands batches to
the training loop and ``validation`` checks the config sections this package
consumes. Nothing here knows models or training.
"""
