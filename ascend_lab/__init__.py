"""ascend_lab: one declarative, reproducible runner for deploying Qwen models on Ascend NPUs.

Importing the package is cheap on purpose: torch, transformers, onnxruntime and mlflow are
imported inside the task that needs them, so `--help` and config errors answer at once.
"""

__version__ = "0.1.0"
