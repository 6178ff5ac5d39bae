"""Datasets and preprocessing for the NumPy networks (NumPy and the standard library only).

Importing this package is cheap: scikit-learn and mnist1d are imported only when the
dataset that needs them is loaded.
"""

from workers.data.datasets import (
    DATASET_SPECS,
    Dataset,
    DatasetError,
    kfold_splits,
    load_dataset,
    stratified_split,
)
from workers.data.preprocess import PREPROCESSING, TAKES_COMPONENTS, Preprocessor, fit_preprocessor

__all__ = [
    "DATASET_SPECS",
    "PREPROCESSING",
    "TAKES_COMPONENTS",
    "Dataset",
    "DatasetError",
    "Preprocessor",
    "fit_preprocessor",
    "kfold_splits",
    "load_dataset",
    "stratified_split",
]
