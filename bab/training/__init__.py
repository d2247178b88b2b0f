"""``bab train``: robust training of small classifiers (the model zoo for method comparisons).

Presets (:mod:`bab.training.arch`) mirror the SoK's FCNN-A/B/C and CNN-A/B/C/D at a smaller
scale; losses (:mod:`bab.training.robust`) are natural, PGD, IBP, CROWN-IBP and noise
augmentation. See docs/training.md.
"""

from bab.training.arch import ARCHS, PRESETS, Classifier, build, to_network
from bab.training.data import Dataset, load_data
from bab.training.errors import TrainingError
from bab.training.loop import (EpochStats, SavedPaths, TrainConfig, TrainedModel, save_model,
                               train_model)
from bab.training.robust import METHODS

__all__ = ["ARCHS", "PRESETS", "METHODS", "Classifier", "Dataset", "EpochStats", "SavedPaths",
           "TrainConfig", "TrainedModel", "TrainingError", "build", "load_data", "save_model",
           "to_network", "train_model"]
