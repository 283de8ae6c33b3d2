"""Subcommands for this area (filled in by its issue); see ``ssl_toolkit.cli.COMMAND_MODULES``."""
from __future__ import annotations


def add_commands(groups: dict) -> None:
    """Add this area's sub-parsers to ``groups`` ("top", "probe", "bench", "rl"); each sets ``func``."""
