"""The runtime interface every implementation (torch, onnxruntime, acl) provides.

A runtime loads one artifact, describes its inputs and outputs, runs feeds of numpy arrays and
releases everything it holds; it is a context manager, so every exit path releases.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str or -1 marks a dynamic dimension
    dtype: np.dtype


class Runtime(ABC):
    name: str = "runtime"

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute once; returns every output by name, on the host."""

    @abstractmethod
    def close(self) -> None:
        """Release all resources; safe to call twice."""
