"""The machinery of one run; ``train.py`` strings it together.

``steps`` holds the train state, ``train_step`` and ``eval_step``;
``parallel`` wraps the step for data parallelism over a device mesh;
``dispatch`` runs the steps between two log lines as one device program;
``measure`` reduces a function over an evaluation split (errors, Fig. 7
responses, dead units, class probabilities). Around them: ``schedule``,
``optimizer``, ``param_paths``, ``finetune``, ``checkpoints``, ``run_dir``,
``progress``, ``exits``, ``compile_options``, ``distributed`` and
``command_line`` (config files and flags).
"""
