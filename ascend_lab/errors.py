"""User-facing errors.

Every error a user can cause (a bad override, a missing file, a toolchain that is not
installed) is an :class:`AscendLabError`. The CLI (``ascend_lab.run.main``) prints one as its
message alone and exits with status 1, in single runs and in sweeps (where the sweeper re-raises
the first failed job's exception); any other exception is a crash and gets Hydra's traceback.

This module imports nothing beyond the standard library, so modules that need only torch (the
static decoder, a standalone GPU check) raise these errors without importing Hydra.
"""

from __future__ import annotations


class AscendLabError(Exception):
    """A problem the user can fix; its message says what and how."""


class ConfigError(AscendLabError):
    """An invalid config value, named by its full key."""

    def __init__(self, key: str, value: object, problem: str) -> None:
        self.key = key
        self.value = value
        super().__init__(f"Invalid config: {key}={value!r}: {problem}")


class ToolchainError(AscendLabError):
    """A device, runtime or compiler that is asked for but not usable here."""


def require(condition: bool, key: str, value: object, problem: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, value, problem)


def require_choice(key: str, value: object, choices: tuple | list) -> None:
    require(value in choices, key, value, "valid values are " + ", ".join(map(str, choices)))


def require_positive(key: str, value: int | float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    require(ok, key, value, "must be " + ("≥ 0" if allow_zero else "> 0"))
