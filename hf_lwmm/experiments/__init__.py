"""The paper's experiments in miniature on the CamVid day→dusk zoo (``scripts/run_experiments.py`` runs them).

Beside the merge, built on it: :mod:`~hf_lwmm.experiments.zoo` reads the zoo's manifest,
:mod:`~hf_lwmm.experiments.rows` merges and evaluates table rows (every score with a bootstrap
interval over images), :mod:`~hf_lwmm.experiments.selection` is the rule that picks α and the start
layer on dusk/val, :mod:`~hf_lwmm.experiments.paper` holds the tables and figures, and
:mod:`~hf_lwmm.experiments.report` writes them.
"""
