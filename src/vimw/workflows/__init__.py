"""Workflows: what trains and scores models, built on the library's parts.

- ``midstream``: train zoo modules (``train_module``, ``build_zoo``) and record them;
- ``downstream``: one downstream method on a task (ViM aggregation or a baseline);
- ``compare``: methods side by side, settings chosen on validation (the README's numbers).

Nothing here is imported by the parts below it (modules, backbones, zoo, training,
aggregation); the command line and recipes call in.
"""
