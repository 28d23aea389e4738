"""Data: the datasets' files and splits, augmentation, and the on-device batch loader."""
from .augment import Augment, default_augment
from .files import DATASETS, Splits, canonical_name, fit_model, load_dataset
from .folder import folder_defaults, is_folder, short_name
from .loader import BatchLoader

__all__ = ["Augment", "default_augment", "DATASETS", "Splits", "canonical_name", "fit_model", "load_dataset",
           "BatchLoader", "folder_defaults", "is_folder", "short_name"]
