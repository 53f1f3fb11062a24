"""task=mnist: the walkthrough's sanity training, proving the device trains a real network.

A 784 → hidden (ReLU) → 10 network, cross-entropy, Adam, on MNIST (``ascend_lab.mnist_data``),
trained on the resolved device. Recorded: ``train_loss`` every ``mnist.log_interval`` batches (the
running mean the walkthrough printed, step = global batch number), ``epoch_loss``, ``test_loss`` and
``test_accuracy`` per epoch (step = epoch), throughput, peak device memory and the trained model.

The network lives at module level so that the pickled model MLflow stores loads wherever
``ascend_lab`` is importable (``mlflow.pytorch.load_model(<tag model_uri>)``).
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Iterator

import torch
from torch import nn

from ascend_lab import mnist_data
from ascend_lab.config import AppConfig
from ascend_lab.config.mnist import MnistConfig
from ascend_lab.context import JobContext
from ascend_lab.progress import progress
from ascend_lab.report import format_table
from ascend_lab.tracking import Tracker

log = logging.getLogger(__name__)

EVAL_BATCH = 1000  # evaluation has no gradients: large batches, same numbers


class MnistNet(nn.Module):
    """The walkthrough's SimpleNet: flatten, fc1 + ReLU, fc2 (logits for 10 digits)."""

    def __init__(self, hidden_size: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden_size)
        self.fc2 = nn.Linear(hidden_size, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 28 * 28)
        return self.fc2(torch.relu(self.fc1(x)))


@dataclass
class FitResult:
    net: MnistNet
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (global batch, running mean)
    epoch_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    train_samples: int = 0
    train_seconds: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else float("nan")


def evaluate(net: nn.Module, loader, device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over ``loader``."""
    net.eval()
    total_loss = torch.zeros((), device=device.torch_device)
    correct = torch.zeros((), dtype=torch.long, device=device.torch_device)
    count = 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device.torch_device), labels.to(device.torch_device)
            logits = net(images)
            total_loss += nn.functional.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(dim=1) == labels).sum()
            count += len(labels)
    net.train()
    return total_loss.item() / count, correct.item() / count


def fit(cfg: MnistConfig, seed: int, splits: mnist_data.MnistSplits, device, tracker: Tracker = Tracker()) -> FitResult:
    """Train and evaluate per ``cfg``; the same seed on the CPU gives the same numbers."""
    from torch.utils.data import DataLoader

    if not device.is_accelerator and cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    torch.manual_seed(seed)  # weights; the shuffle has its own generator below
    train_set, test_set = splits.datasets()
    accelerator = device.is_accelerator
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                              generator=torch.Generator().manual_seed(seed), pin_memory=accelerator)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH, num_workers=cfg.num_workers, pin_memory=accelerator)

    target = device.torch_device
    net = MnistNet(cfg.hidden_size).to(target)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    result = FitResult(net)
    with _logging_beside_bar():
        for epoch in range(1, cfg.epochs + 1):
            epoch_loss, seconds = _train_epoch(cfg, epoch, net, optimizer, train_loader, device, tracker, result)
            result.train_seconds += seconds
            result.train_samples += len(train_set)
            test_loss, test_accuracy = evaluate(net, test_loader, device)
            result.epoch_loss.append(epoch_loss)
            result.test_loss.append(test_loss)
            result.test_accuracy.append(test_accuracy)
            tracker.log_metrics({"epoch_loss": epoch_loss, "test_loss": test_loss, "test_accuracy": test_accuracy,
                                 "epoch_seconds": seconds}, step=epoch)
            log.info("epoch %d: train loss %.4f, test loss %.4f, test accuracy %.2f %%",
                     epoch, epoch_loss, test_loss, 100 * test_accuracy)
    return result


def _train_epoch(cfg: MnistConfig, epoch: int, net: nn.Module, optimizer, loader, device, tracker: Tracker,
                 result: FitResult) -> tuple[float, float]:
    """One pass over ``loader``; appends the interval points to ``result``. Returns (mean loss,
    training seconds), the seconds without the time spent recording the points."""
    target, batches, criterion = device.torch_device, len(loader), nn.CrossEntropyLoss()
    # Losses stay on the device and are read at the interval, so each batch does not wait on it.
    running = torch.zeros((), device=target)
    epoch_sum = torch.zeros((), device=target)
    recording_s = 0.0
    with device.host_timer() as timer:
        for i, (images, labels) in enumerate(progress(loader, f"epoch {epoch}/{cfg.epochs}", batches)):
            images, labels = images.to(target, non_blocking=True), labels.to(target, non_blocking=True)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running += loss.detach()
            epoch_sum += loss.detach()
            if (i + 1) % cfg.log_interval == 0:
                step, mean = (epoch - 1) * batches + i + 1, running.item() / cfg.log_interval
                recording_started = time.perf_counter()
                log.info("[Epoch %d, Batch %d] loss: %.4f", epoch, i + 1, mean)
                tracker.log_metrics({"train_loss": mean}, step=step)
                result.train_loss.append((step, mean))
                running.zero_()
                recording_s += time.perf_counter() - recording_started
    return epoch_sum.item() / batches, timer.elapsed_ms / 1e3 - recording_s


@contextmanager
def _logging_beside_bar() -> Iterator[None]:
    """On a terminal, route console log lines through tqdm so they print above the bar, not through it."""
    if not sys.stderr.isatty():
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield


def log_trained_model(tracker: Tracker, net: MnistNet, example: torch.Tensor) -> str | None:
    """Log the network as an MLflow PyTorch model (on the CPU, so it loads on any host)."""
    cpu_net = net.to("cpu").eval()
    # Pickle rather than MLflow 3's default pt2: pt2 runs torch.export (several seconds of dynamo
    # import and tracing for this tiny net); MnistNet is importable, so the pickle loads wherever
    # ascend_lab is installed. Naming the requirements skips MLflow's inference of them, which
    # re-imports the model in a subprocess (about 10 s).
    requirements = [f"{name}=={metadata.version(name)}" for name in ("torch", "cloudpickle")]
    return tracker.log_model("pytorch", cpu_net, name="mnist_model", serialization_format="pickle",
                             input_example=example.numpy(), pip_requirements=requirements)


def run(cfg: AppConfig, ctx: JobContext) -> dict:
    started = time.perf_counter()
    device = ctx.device
    splits = mnist_data.load(cfg.mnist, cfg.seed, ctx.path(cfg.mnist.root))
    log.info("data: %s", splits.description)
    ctx.tracker.set_tags({"mnist.data": splits.description})

    device.reset_peak_memory()
    result = fit(cfg.mnist, cfg.seed, splits, device, ctx.tracker)
    peak_mb = device.memory().peak_allocated_mb
    metrics = {"train_samples_per_s": result.samples_per_s, "train_seconds": result.train_seconds,
               "device_peak_mb": peak_mb}
    ctx.tracker.log_metrics(metrics)

    model_uri = log_trained_model(ctx.tracker, result.net, splits.test_images[:2])
    if model_uri:
        ctx.tracker.set_tags({"model_uri": model_uri})

    summary = {
        "epochs": cfg.mnist.epochs,
        "train / test samples": f"{len(splits.train_labels)} / {len(splits.test_labels)}",
        "final test accuracy": result.test_accuracy[-1],
        "final test loss": result.test_loss[-1],
        "train samples/s": result.samples_per_s,
        "train seconds": result.train_seconds,
        "task seconds": time.perf_counter() - started,
        "device": str(device.torch_device),
        "peak device memory (MB)": peak_mb if device.is_accelerator else "-",
        "model": model_uri or "not logged (tracking off)",
    }
    table = format_table(["mnist", "result"], list(summary.items()), title="ascend_lab mnist")
    print(table)
    ctx.tracker.log_text(table + "\n", "mnist_summary.txt")
    return {**metrics, "test_accuracy": result.test_accuracy[-1], "test_loss": result.test_loss[-1],
            "model_uri": model_uri}
