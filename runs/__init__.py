"""Experiment runners: every step of an experiment in one resumable command (``python train.py run``).

Over :mod:`impactx` and :mod:`callbacks`; ``train.py`` builds the trainers. Nothing in ``impactx`` or
``callbacks`` imports this package.
"""

from runs.experiment import METHODS, ExperimentRunner, RunOptions, TrainerFactory, method_of

__all__ = ["METHODS", "ExperimentRunner", "RunOptions", "TrainerFactory", "method_of"]
