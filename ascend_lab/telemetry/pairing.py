"""The torch ↔ torch_npu ↔ CANN pairing: is this host's triple one that Ascend publishes?

A mismatched triple is the usual reason ``import torch_npu`` fails or misbehaves, so ``task=doctor`` checks it
against the table Ascend/pytorch publishes (its README links ``COMPATIBILITY.en.md``). The table is data in this
package (``torch_npu_compatibility.json``, with the URL and commit it was copied from), never fetched at run time:
a doctor must work offline. When the triple is off, the result names what does match: the torch_npu and CANN
versions published for this torch, and the torch / torch_npu pairs published for this CANN.

Version matching: local labels are dropped (``2.1.0+cpu`` → ``2.1.0``); a CANN version matches a table entry
when the entry's dot-separated parts begin it, case aside (``8.0.RC2.alpha003`` matches ``8.0.RC2``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

TABLE_FILE = "torch_npu_compatibility.json"
NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class Pair:
    torch_npu: str
    torch: str
    cann: str
    branch: str


@dataclass
class PairingResult:
    """``status``: ok | mismatch | unknown (torch_npu not in the table) | not applicable (no torch_npu)."""

    status: str
    message: str
    for_torch: list[Pair] = field(default_factory=list)  # published rows for this host's torch
    for_cann: list[Pair] = field(default_factory=list)  # published rows for this host's CANN

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "not applicable")


@lru_cache(maxsize=1)
def compatibility_table() -> tuple[dict, tuple[Pair, ...]]:
    """(source, rows) of the packaged table."""
    data = json.loads(resources.files(__package__).joinpath(TABLE_FILE).read_text(encoding="utf-8"))
    return data["source"], tuple(Pair(**row) for row in data["rows"])


def public_version(version: str) -> str:
    """``2.1.0+cpu`` → ``2.1.0`` (the local label is a build variant, not another release)."""
    return version.split("+", 1)[0].strip()


def cann_matches(installed: str, published: str) -> bool:
    want = [p.lower() for p in published.split(".")]
    have = [p.lower() for p in installed.split(".")]
    return have[:len(want)] == want


def _listed(pairs: list[Pair], what: str) -> str:
    if what == "torch":
        return ", ".join(f"torch_npu {p.torch_npu} with CANN {p.cann}" for p in pairs)
    return ", ".join(f"torch {p.torch} with torch_npu {p.torch_npu}" for p in pairs)


def check_pairing(torch_version: str, torch_npu_version: str, cann_version: str | None) -> PairingResult:
    """This host's triple against the published table (``cann_version`` None: CANN not installed)."""
    source, rows = compatibility_table()
    where = f"(table: {source['url']})"
    if torch_npu_version == NOT_INSTALLED:
        return PairingResult("not applicable",
                             "torch_npu is not installed: no torch ↔ torch_npu ↔ CANN pairing to check")
    torch_v, npu_v = public_version(torch_version), public_version(torch_npu_version)
    for_torch = [p for p in rows if p.torch == torch_v]
    for_cann = [p for p in rows if cann_version and cann_matches(cann_version, p.cann)]
    published = [p for p in rows if p.torch_npu == npu_v]
    if not published:
        return PairingResult("unknown", (
            f"torch_npu {npu_v} is not in the published table {where}: a newer or development build. Published for "
            f"torch {torch_v}: {_listed(for_torch, 'torch') or 'nothing'}"), for_torch, for_cann)
    problems = []
    if not any(p.torch == torch_v for p in published):
        problems.append(f"torch_npu {npu_v} is built for torch {' or '.join(sorted({p.torch for p in published}))}, "
                        f"not torch {torch_v}")
    if cann_version is None:
        problems.append(f"CANN is not installed; torch_npu {npu_v} needs CANN "
                        f"{' or '.join(sorted({p.cann for p in published}))}")
    elif not any(cann_matches(cann_version, p.cann) for p in published):
        problems.append(f"torch_npu {npu_v} is published for CANN {' or '.join(sorted({p.cann for p in published}))}, "
                        f"not CANN {cann_version}")
    if not problems:
        return PairingResult("ok", f"torch {torch_v}, torch_npu {npu_v} and CANN {cann_version} are a published "
                                   f"pairing {where}", for_torch, for_cann)
    matches = []
    if for_torch:
        matches.append(f"for torch {torch_v}: {_listed(for_torch, 'torch')}")
    if for_cann:
        matches.append(f"for CANN {cann_version}: {_listed(for_cann, 'cann')}")
    return PairingResult("mismatch", "; ".join(problems) + ". Versions that match: "
                         + ("; ".join(matches) if matches else "none published for this torch or this CANN")
                         + f" {where}", for_torch, for_cann)


__all__ = ["Pair", "PairingResult", "cann_matches", "check_pairing", "compatibility_table", "public_version"]
