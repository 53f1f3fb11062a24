"""``runtime=acl``: the compiled ``.om`` through pyACL. ATC fixed its threads and graph at compile time
(the ``atc`` group), so no key of its own applies at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.config.runtime import NAME_HELP, RuntimeConfig


@dataclass
class AclRuntimeConfig(RuntimeConfig):
    artifact: ClassVar[str] = "om"

    name: str = field(default="acl", metadata=NAME_HELP)
    _target_: str = "ascend_lab.runtimes.acl.runtime.AclRuntime"
