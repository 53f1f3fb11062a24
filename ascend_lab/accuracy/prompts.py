"""The prompts of an accuracy run: ``accuracy.prompts`` or ``accuracy.prompts_file``, as token ids.

A prompt file is the user's input, so everything wrong with it (missing, unreadable, not UTF-8, no
prompt in it, a prompt that tokenizes to nothing) is a :class:`ConfigError` naming the key and the path,
raised before any export or compile work.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ascend_lab.accuracy.compare import Prompt
from ascend_lab.errors import ConfigError

KEY = "accuracy.prompts_file"


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line of a UTF-8 file (a BOM is dropped; blank lines and trailing whitespace skipped)."""
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(KEY, str(path), f"{problem}; give a UTF-8 text file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(KEY, str(path), _not_utf8(path, exc)) from None
    except OSError as exc:
        raise ConfigError(KEY, str(path), f"cannot be read ({exc.strerror or exc})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(KEY, str(path), "holds no prompt (only blank lines or nothing); write one prompt per line")
    return prompts


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """What a file that is not UTF-8 is, where we can tell: GBK (GB18030 its superset) is what a Chinese Windows
    editor saves. The file is still refused: a guessed encoding would turn a wrong guess into wrong prompts."""
    data = path.read_bytes()
    for encoding in ("gbk", "gb18030"):
        try:
            data.decode(encoding)
        except UnicodeDecodeError:
            continue
        converted = path.with_name(f"{path.stem}.utf8{path.suffix}")
        return (f"is {encoding.upper()} text, not UTF-8 (byte {exc.start}: {exc.reason}); convert it with "
                f"`iconv -f {encoding} -t utf-8 {shlex.quote(str(path))} > {shlex.quote(str(converted))}` and set "
                f"{KEY}={converted}")
    return f"is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8, one prompt per line"


def prompt_texts(accuracy_cfg, resolve_path) -> list[str]:
    """The configured prompts; ``resolve_path`` makes a relative ``prompts_file`` absolute (the launch dir)."""
    if accuracy_cfg.prompts_file is None:
        return list(accuracy_cfg.prompts)
    return read_prompts_file(Path(resolve_path(accuracy_cfg.prompts_file)))


def tokenize(texts: list[str], tokenizer, source: str) -> list[Prompt]:
    """Each prompt's token ids; ``source`` names where the prompts came from (the key) for errors."""
    prompts = []
    for text in texts:
        ids = tuple(int(i) for i in tokenizer(text)["input_ids"])
        if not ids:
            raise ConfigError(source, text, "this prompt tokenizes to no tokens; give a non-empty prompt")
        prompts.append(Prompt(text, ids))
    return prompts
