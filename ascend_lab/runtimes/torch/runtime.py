"""The torch runtime: the model in PyTorch on the resolved device (npu, cuda or cpu).

It runs the export's graph modules (:func:`ascend_lab.graphs.wrapper_for`), so torch,
onnxruntime and pyACL execute the same graph contract; its cache backend keeps the kv_cache graph's
cache and the generated tokens on the device between steps. With ``runtime.graph_capture`` or
``runtime.compile`` the engine is instead the static-cache decoder whose decode step is compiled and
captured as one CUDA/NPU graph (:mod:`ascend_lab.runtimes.torch.static_decoder`). Its options:
:class:`~ascend_lab.runtimes.torch.config.TorchRuntimeConfig`; its profiler: :mod:`~ascend_lab.runtimes.torch.profiler`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.errors import ConfigError, ToolchainError
from ascend_lab.runtimes.base import Runtime, TensorSpec
from ascend_lab.runtimes.engine import Engine, Traffic, no_layer_outputs
from ascend_lab.runtimes.torch.config import TorchRuntimeConfig


def compile_backend(choice: str, device_kind: str):
    """The ``torch.compile`` backend for ``runtime.compile_backend`` on this device.

    auto: torchair on an NPU (torch_npu's inductor support is missing or very slow there, which is why sglang's
    Ascend backend compiles with torchair), inductor elsewhere.
    """
    if choice == "inductor" or (choice == "auto" and device_kind != "npu"):
        return "inductor"
    try:
        import torchair
    except ImportError as exc:
        raise ToolchainError(
            f"runtime.compile on an NPU needs torchair (runtime.compile_backend={choice}): `import torchair` "
            f"failed ({exc}). Install the torchair package matching your torch_npu, or use "
            "runtime.compile_backend=inductor, or drop runtime.compile.") from None
    return torchair.get_npu_backend()


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(self, model, contract: gc.GraphContract, torch_device, intra_op_threads: int = 0,
                 graph_capture: bool = False, compile: bool = False, compile_backend_choice: str = "auto",
                 tokenizer=None) -> None:
        import torch

        from ascend_lab.graphs import wrapper_for

        if intra_op_threads > 0:
            torch.set_num_threads(intra_op_threads)
        self.contract = contract
        self.device = torch_device
        self.threads = torch.get_num_threads() if torch.device(torch_device).type == "cpu" else None
        self.model = model
        self.tokenizer = tokenizer
        self.graph_capture, self.compile = graph_capture, compile
        self.compile_backend_choice = compile_backend_choice
        self.wrapper = wrapper_for(contract.graph, model, layer_outputs=contract.layer_outputs).eval()

    @classmethod
    def load(cls, config: TorchRuntimeConfig, source, device) -> "TorchRuntime":
        """Build the model ``source`` (an ``ascend_lab.models.ModelSource``) describes on ``device`` (an
        ``ascend_lab.device.Device``)."""
        from ascend_lab.models import load_model

        loaded = load_model(source.model, source.seed, device=device.torch_device)
        contract = gc.GraphContract(source.graph, gc.ModelDims.of(loaded.config), source.model.dtype,
                                    source.layer_outputs)
        return cls(loaded.model, contract, device.torch_device, config.intra_op_threads,
                   graph_capture=config.graph_capture, compile=config.compile,
                   compile_backend_choice=config.compile_backend, tokenizer=loaded.tokenizer)

    def timer(self, device):
        """Device events (or a synchronised host clock): torch's calls return before the device finishes."""
        return device.timer

    @property
    def inputs(self) -> list[TensorSpec]:
        ids = np.dtype(np.int64)
        if self.contract.graph != "kv_cache":
            return [TensorSpec(gc.INPUT_IDS, ("batch", "seq"), ids), TensorSpec(gc.ATTENTION_MASK, ("batch", "seq"), ids)]
        cache = ("capacity", "batch", *self.contract.cache_shape(1, 1)[2:])
        return [TensorSpec(gc.INPUT_IDS, ("batch", "seq"), ids), TensorSpec(gc.POSITION_IDS, ("batch", "seq"), ids),
                TensorSpec(gc.PAST_LENGTH, (1,), ids), TensorSpec(gc.PAD_LENGTHS, ("batch",), ids),
                TensorSpec(gc.PAST_KEY_VALUES, cache, np.dtype(self.contract.numpy_dtype))]

    @property
    def outputs(self) -> list[TensorSpec]:
        dtype = np.dtype(self.contract.numpy_dtype)
        d = self.contract.dims
        if self.contract.graph == "hidden_states":
            return [TensorSpec(gc.HIDDEN_STATES, ("batch", "seq", d.hidden_size), dtype)]
        if self.contract.graph == "logits":
            return [TensorSpec(gc.LOGITS, ("batch", "seq", d.vocab_size), dtype)]
        present = ("seq", "batch", *self.contract.cache_shape(1, 1)[2:])
        specs = [TensorSpec(gc.LOGITS, ("batch", d.vocab_size), dtype),
                 TensorSpec(gc.NEXT_TOKEN, ("batch",), np.dtype(np.int64)),
                 TensorSpec(gc.PRESENT_KEY_VALUES, present, dtype)]
        if self.contract.layer_outputs:
            specs.append(TensorSpec(gc.LAYER_HIDDEN_STATES, (d.num_layers, "batch", d.hidden_size), dtype))
        return specs

    def to_device(self, feeds: Mapping[str, np.ndarray]) -> list:
        """The graph's arguments on the device, in input order (floats in the model dtype)."""
        import torch

        args = []
        for spec in self.inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[spec.name])).to(self.device)
            args.append(tensor.to(self.model.dtype) if tensor.is_floating_point() else tensor)
        return args

    def call(self, args: list) -> tuple:
        import torch

        with torch.inference_mode():
            out = self.wrapper(*args)
        return out if isinstance(out, tuple) else (out,)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.call(self.to_device(feeds))
        return {name: _to_numpy(t) for name, t in zip(self.contract.output_names(), outputs)}

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], object]:
        args = self.to_device(feeds)
        return lambda: self.call(args)

    def cache_backend(self) -> TorchCacheBackend:
        return TorchCacheBackend(self)

    def engine(self, max_tokens: int, capacity_limit: int, keep_logits: bool = False) -> Engine:
        """The generic engine over :class:`TorchCacheBackend`, or with ``runtime.graph_capture`` /
        ``runtime.compile`` the static-cache engine whose decode step is compiled and captured. That one
        keeps its logits on the device and feeds only its own tokens (so nothing leaves the captured step),
        so ``keep_logits`` (task=accuracy: per-step logits, teacher forcing) is refused with it."""
        if not (self.graph_capture or self.compile):
            return super().engine(max_tokens, capacity_limit, keep_logits)
        if keep_logits:
            key = "runtime.graph_capture" if self.graph_capture else "runtime.compile"
            raise ConfigError(key, True, "the static-cache decoder it selects returns no per-step logits and cannot "
                                         "be fed the reference's tokens (teacher forcing), which task=accuracy "
                                         "needs; compare runtime=torch without runtime.graph_capture / "
                                         "runtime.compile (the same graph, eager)")
        from ascend_lab.runtimes.torch.static_decoder import StaticDecoderEngine

        self.contract.require_generative()
        backend = compile_backend(self.compile_backend_choice, self.device.type) if self.compile else None
        return StaticDecoderEngine(self.model, self.device, max_len=max(max_tokens, 2),
                                   graph_capture=self.graph_capture, compile=self.compile, compile_backend=backend)

    @contextmanager
    def profiled(self, out_dir, settings) -> Iterator:
        """torch.profiler on the CPU/CUDA, torch_npu.profiler on an NPU (:mod:`ascend_lab.runtimes.torch.profiler`);
        the pass runs on this runtime."""
        from ascend_lab.runtimes.torch.profiler import TorchProfiling

        with TorchProfiling(self, self.device.type, out_dir, settings).session() as session:
            yield session

    def close(self) -> None:
        self.wrapper = None


class TorchCacheBackend:
    """The kv_cache graph's cache as one tensor on the device; tokens stay there too (no host sync per step)."""

    fixed_capacity = None
    seq_gears = None

    def __init__(self, runtime: TorchRuntime) -> None:
        self.runtime = runtime
        self.traffic = Traffic()
        self.batch = self.capacity = 0
        self._pads = None
        self._logits = None
        self._layer_hidden = None

    def allocate(self, batch: int, capacity: int) -> None:
        import torch

        contract = self.runtime.contract
        self.cache = torch.zeros(contract.cache_shape(capacity, batch), dtype=self.runtime.model.dtype,
                                 device=self.runtime.device)
        self.batch, self.capacity = batch, capacity

    def execute(self, input_ids, position_ids: np.ndarray, past_length: int, pad_lengths: np.ndarray | None):
        import torch

        device = self.runtime.device
        if isinstance(input_ids, np.ndarray):
            ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(device)
        else:
            ids = input_ids
        if ids.ndim == 1:
            ids = ids.unsqueeze(1)
        if pad_lengths is not None:
            self._pads = torch.from_numpy(np.ascontiguousarray(pad_lengths, dtype=np.int64)).to(device)
        positions = torch.from_numpy(np.ascontiguousarray(position_ids, dtype=np.int64)).to(device)
        past = torch.tensor([past_length], dtype=torch.int64, device=device)
        outputs = dict(zip(self.runtime.contract.output_names(),
                           self.runtime.call([ids, positions, past, self._pads, self.cache])))
        present = outputs[gc.PRESENT_KEY_VALUES]
        self.cache[past_length:past_length + present.shape[0]].copy_(present)
        self._logits = outputs[gc.LOGITS]
        self._layer_hidden = outputs.get(gc.LAYER_HIDDEN_STATES)
        return outputs[gc.NEXT_TOKEN]

    def to_host(self, tokens) -> np.ndarray:
        return tokens.cpu().numpy().astype(np.int64)

    def read_slots(self, start: int, stop: int, row: int | None = None):
        return (self.cache[start:stop] if row is None else self.cache[start:stop, row]).clone()

    def write_slots(self, start: int, values, row: int | None = None) -> None:
        if row is None:
            self.cache[start:start + values.shape[0]].copy_(values)
        else:
            self.cache[start:start + values.shape[0], row].copy_(values)

    def last_logits(self) -> np.ndarray:
        return _to_numpy(self._logits)

    def last_layer_hidden(self) -> np.ndarray:
        if self._layer_hidden is None:
            raise no_layer_outputs("torch")
        return _to_numpy(self._layer_hidden)


def _to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.cpu().numpy()
