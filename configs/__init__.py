"""Experiment configs (ml_collections): ``get_config(arg)`` per file, ``sweep(add)`` for studies."""
