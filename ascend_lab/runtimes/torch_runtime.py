"""The torch runtime: the model in PyTorch on the resolved device (npu, cuda or cpu).

It runs the export helper's graph wrappers (``KVCacheDecoder`` etc.), so torch and onnxruntime
execute the same semantics and I/O convention. ``run(feeds)`` takes and returns numpy like every
runtime; ``bind`` and :class:`TorchEngine` are the fast paths the benchmark uses, with inputs
placed on the device once and the KV cache and tokens kept there between decode steps.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ascend_lab.bench.generation import GraphLayout
from ascend_lab.runtimes.base import Runtime, TensorSpec


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(self, model, layout: GraphLayout, torch_device, intra_op_threads: int = 0,
                 graph_capture: bool = False, compile: bool = False) -> None:
        import torch

        from ascend_lab.export.wrappers import wrapper_for

        if intra_op_threads > 0:
            torch.set_num_threads(intra_op_threads)
        self.layout = layout
        self.device = torch_device
        self.dtype = model.dtype
        self.model = model
        self.graph_capture, self.compile = graph_capture, compile
        self.wrapper = wrapper_for(layout.graph, model).eval()

    @classmethod
    def load(cls, cfg, device) -> "TorchRuntime":
        """Build the configured model on ``device`` (an ``ascend_lab.device.Device``)."""
        from ascend_lab.models import load_model

        loaded = load_model(cfg.model, cfg.seed, device=device.torch_device)
        layout = GraphLayout.from_model_config(cfg.export.graph, loaded.config, cfg.model.dtype)
        runtime = cls(loaded.model, layout, device.torch_device, cfg.runtime.intra_op_threads,
                      graph_capture=cfg.runtime.graph_capture, compile=cfg.runtime.compile)
        runtime.tokenizer = loaded.tokenizer
        return runtime

    @property
    def inputs(self) -> list[TensorSpec]:
        past = ("batch", self.layout.num_kv_heads, "past_seq", self.layout.head_dim)
        ids = TensorSpec("input_ids", ("batch", "seq"), np.dtype(np.int64))
        mask = TensorSpec("attention_mask", ("batch", "total_seq" if self.layout.graph == "kv_cache" else "seq"),
                          np.dtype(np.int64))
        return [ids, mask] + [TensorSpec(n, past, np.dtype(self.layout.cache_dtype)) for n in self.layout.past_names()]

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.layout.graph == "hidden_states":
            return [TensorSpec("hidden_states", ("batch", "seq", "hidden"), np.dtype(self.layout.cache_dtype))]
        logits = TensorSpec("logits", ("batch", "seq", self.layout.vocab_size), np.dtype(self.layout.cache_dtype))
        present = ("batch", self.layout.num_kv_heads, "total_seq", self.layout.head_dim)
        return [logits] + [TensorSpec(n, present, np.dtype(self.layout.cache_dtype))
                           for n in self.layout.present_names()]

    def _to_device(self, feeds: Mapping[str, np.ndarray]) -> list:
        import torch

        args = []
        for name in self.layout.input_names():
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
            args.append(tensor if name in ("input_ids", "attention_mask") else tensor.to(self.dtype))
        return args

    def _call(self, args: list):
        import torch

        with torch.inference_mode():
            out = self.wrapper(*args)
        return out if isinstance(out, tuple) else (out,)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._call(self._to_device(feeds))
        return {name: _to_numpy(t) for name, t in zip(self.layout.output_names(), outputs)}

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """A zero-argument call on inputs already on the device; outputs stay there."""
        args = self._to_device(feeds)
        return lambda: self._call(args)

    def engine(self, max_len: int | None = None):
        """The decode engine: the wrapper's dynamic cache, or with ``runtime.graph_capture`` (or
        ``compile``) the static-cache engine whose decode step is captured/compiled; ``max_len`` is
        the prompt + new tokens it must hold."""
        if self.graph_capture or self.compile:
            from ascend_lab.runtimes.static_decoder import StaticDecoderEngine

            self.layout.require_generative()
            return StaticDecoderEngine(self.model, self.device, max_len=max(max_len or 0, 2),
                                       graph_capture=self.graph_capture, compile=self.compile)
        return TorchEngine(self)

    def close(self) -> None:
        self.wrapper = None


class TorchEngine:
    """Greedy decoding with the KV cache, mask and tokens on the device (no host round trip)."""

    def __init__(self, runtime: TorchRuntime) -> None:
        runtime.layout.require_generative()
        self.runtime = runtime
        self.layout = runtime.layout
        self._tokens: list = []

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        feeds = self.layout.forward_feeds(input_ids, attention_mask)
        args = self.runtime._to_device(feeds)
        self._ids, self._mask = args[0], args[1]
        self._tokens = []
        self._advance(args)

    def step(self) -> None:
        import torch

        last = self._tokens[-1].unsqueeze(1)
        self._mask = torch.cat([self._mask, torch.ones_like(last)], dim=1)
        if self.layout.graph == "kv_cache":
            args = [last, self._mask, *self._past]
        else:
            self._ids = torch.cat([self._ids, last], dim=1)
            args = [self._ids, self._mask]
        self._advance(args)

    def _advance(self, args: list) -> None:
        outputs = self.runtime._call(args)
        self._past = outputs[1:]
        self._tokens.append(outputs[0][:, -1, :].argmax(dim=-1))

    def generated(self) -> np.ndarray:
        import torch

        return torch.stack(self._tokens, dim=1).cpu().numpy().astype(np.int64)


def _to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.cpu().numpy()
