"""ATC's file-valued switches, from their typed lists: ``--keep_dtype`` and ``--fusion_switch_file``.

ATC reads both from files (CANN ATC reference: --keep_dtype, atlasatcparam_16_0074: one original op name per
line, or ``OpType::<type>``; --fusion_switch_file, atlasatcparam_16_0053: one ``<fusion pass>:off`` line per
pass switched off). The config holds them as lists (``atc.keep_dtype``, ``atc.fusion_switch_off``), so a sweep
can vary them like any other key; this module writes each list as its file, named by a hash of its content in
``<atc.output_dir>/switches/``: the same list is the same path, and the path's name is what the compile cache
key records (:func:`ascend_lab.compile.command.cache_key`), so the key follows the content, not the folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ascend_lab.config.atc import AtcConfig

SWITCH_FOLDER = "switches"
# flag → (the AtcConfig field it comes from, how one entry is written as a line)
FILE_FLAGS = {
    "keep_dtype": ("keep_dtype", "{}"),
    "fusion_switch_file": ("fusion_switch_off", "{}:off"),
}


def switch_files(atc_cfg: AtcConfig, output_root: Path) -> dict[str, Path]:
    """``{flag: file}`` for every non-empty switch list, each written (once) under ``output_root``."""
    files = {}
    for flag, (key, line) in FILE_FLAGS.items():
        entries = getattr(atc_cfg, key)
        if not entries:
            continue
        text = "".join(line.format(entry) + "\n" for entry in entries)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = Path(output_root) / SWITCH_FOLDER / f"{flag}_{digest}.cfg"
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            staging.write_text(text)
            staging.replace(path)  # atomic: a sweep's jobs may write the same file at once
        files[flag] = path
    return files
