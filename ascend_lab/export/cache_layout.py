"""Which layout the kv_cache graph's cache input takes: rank 5 ``[capacity, b, 2·layers, kv_heads, head_dim]``, or
rank 4 ``[capacity, b, 2·layers, kv_heads·head_dim]`` for CANN releases whose ``--dynamic_dims`` takes ND inputs
of rank ≤ 4 only.

The --dynamic_dims pages of CANN 7.0 and 8.0.RC1/RC2 (atlasatc_16_0054, e.g.
https://www.hiascend.com/document/detail/zh/canncommercial/700/inferapplicationdev/atctool/atlasatc_16_0054.html)
add "ND … N<=4"; the 8.0.RC3+ page (atlasatcparam_16_0020) has no such limit. Tlntin/qwen-ascend-llm folds its
cache to rank 4 for the same reason. Both layouts hold the same bytes in the same order (one slot of the
whole batch stays one contiguous block), so only the graph's input and output shapes differ.
"""

from __future__ import annotations

RANK_LIMITED = ("7.", "8.0.RC1", "8.0.RC2")  # version prefixes whose --dynamic_dims page says N<=4


def resolve(setting: str, cann_version: str | None) -> tuple[str, str]:
    """(layout, why) for ``export.cache_layout``: ``auto`` picks rank4 on a rank-limited CANN (the version
    doctor reports, from the toolkit's install info), rank5 elsewhere."""
    if setting != "auto":
        return setting, f"export.cache_layout={setting}"
    if cann_version and any(cann_version.upper().startswith(p.upper()) for p in RANK_LIMITED):
        return "rank4", f"auto: CANN {cann_version}'s --dynamic_dims takes inputs of rank <= 4"
    return "rank5", f"auto: CANN {cann_version or 'not installed'} has no rank limit for --dynamic_dims"
