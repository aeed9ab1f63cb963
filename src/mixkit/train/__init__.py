"""The training and benchmark harness: ``train``, configs and presets, ``run_bench``."""

from mixkit.train.config import PRESETS, TrainConfig, resolve_config
from mixkit.train.engine import TrainData, load_train_data, train

__all__ = ["TrainConfig", "PRESETS", "resolve_config", "TrainData", "load_train_data", "train"]
