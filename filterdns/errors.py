"""Typed errors shared by the config loaders, `filterdns check`, start-up and reload."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, with where it is."""

    file: str
    line: int | None
    col: int | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in one configuration, collected before failing once."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def list_config_dir(path, what: str) -> list[str]:
    """The entry names of a config directory (``what``: "zones", "chains"), or a ConfigError that
    says which of missing, not a directory, or unreadable it is (with the OS's reason)."""
    import os

    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        why = f"{what} directory not found"
    except NotADirectoryError:
        why = f"{what} directory is not a directory"
    except OSError as e:
        why = f"{what} directory cannot be read: {e.strerror or e}"
    raise ConfigError([Problem(str(path), None, None, why)])
