"""scaling_grid: measure neural scaling laws (trainer: one run; grid: many runs and the CLI; analysis: fits).

The code lives at the repository root in ``trainer/``, ``grid/`` and ``analysis/``; this folder holds
relative symlinks to them, so ``scaling_grid.trainer`` is found by path (an editable install adds
``src/`` to ``sys.path``; a wheel holds real files) and editors and type checkers follow every import.
"""
