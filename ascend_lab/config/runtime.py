"""`runtime` group: what executes the model in task=infer / task=bench.

Each runtime's options are its own dataclass (``ascend_lab/runtimes/<name>/config.py``), a subclass of
:class:`RuntimeConfig` registered as an option of the group (:func:`ascend_lab.runtimes.registry.register_configs`),
so a key the chosen runtime does not read cannot be set: Hydra refuses it, naming the key. ``runtime=auto`` is
this base class itself: only ``name``, and the choice is made when the run prepares (:mod:`ascend_lab.prepare`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.errors import require


NAME_HELP = {"help": "The runtime, chosen with the group: runtime=auto (acl where a compiled .om and pyACL exist, else "
                     "onnxruntime), runtime=torch, runtime=onnxruntime or runtime=acl."}


@dataclass
class RuntimeConfig:
    group: ClassVar[str] = "runtime"
    # What the runtime loads, which ascend_lab.prepare makes ready: "model" (built in process), "onnx" (the export
    # in model.dtype), "om" (exported in atc.export_dtype and compiled); None: auto, which picks a runtime first.
    artifact: ClassVar[str | None] = None

    name: str = field(default="auto", metadata=NAME_HELP)

    def __post_init__(self) -> None:
        own = type(self).__dataclass_fields__["name"].default
        require(self.name == own, "runtime.name", self.name,
                f"is set by choosing the runtime group: use runtime={self.name} instead of runtime.name={self.name}"
                " (each runtime has its own keys)")
