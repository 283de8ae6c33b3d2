"""The `ssl-toolkit` commands that documentation shows, found and checked without running them.

Used by the docs and Docker tests: a command shown to users must parse — its subcommand path and
every flag exist (argparse for the plain subcommands; LightningCLI's own parser, through
``--print_config``, for ``pretrain``, which also rejects unknown config keys).
"""
from __future__ import annotations

import contextlib
import io
import re
import shlex

FENCE = re.compile(r"```(bash|sh|shell|console)\n(.*?)```", re.S)
IMAGE = re.compile(r"^ssl-toolkit(:[\w.-]+)?$")
ENV_VAR = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")


def shell_commands(markdown: str) -> list[list[str]]:
    """Every command of the shell blocks in ``markdown``: continuation lines joined, comments and
    prompts dropped, split as the shell would (``$VARS`` become ``2``, a stand-in that parses as a
    count and a path alike)."""
    commands = []
    for _, block in FENCE.findall(markdown):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                tokens = shlex.split(part, comments=True)
                if tokens:
                    commands.append([ENV_VAR.sub("2", t) for t in tokens])
    return commands


def toolkit_args(tokens: list[str]) -> list[str] | None:
    """The arguments ``ssl-toolkit`` receives from a command line: after ``ssl-toolkit``, after the
    image ``ssl-toolkit:<tag>`` of a ``docker run``, or after ``-m ssl_toolkit.cli`` (torchrun,
    ``python -m``). None for a line that runs no ``ssl-toolkit`` command (``docker build``, ``srun``…)."""
    for i, token in enumerate(tokens[:-1]):
        if token == "-m" and tokens[i + 1] == "ssl_toolkit.cli":
            return tokens[i + 2:]
    if tokens and tokens[0] in ("docker", "srun", "sbatch", "torchrun") and "--entrypoint" in tokens:
        return None  # another program runs in the image; its `-m ssl_toolkit.cli` was handled above
    for i, token in enumerate(tokens):
        if IMAGE.match(token) and not (i and tokens[i - 1] in ("-t", "--tag")):
            if tokens[0] == "docker" and tokens[1:2] != ["run"]:
                return None
            return tokens[i + 1:]
    return None


def check_toolkit_args(args: list[str]) -> str:
    """Parse ``ssl-toolkit ARGS`` without running it; raise AssertionError naming what does not parse.

    Returns the subcommand path checked (``"probe linear"``).
    """
    from ssl_toolkit.cli import build_parser

    if args and args[0] == "pretrain":
        from ssl_toolkit.pretrain import run_pretrain_cli

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_pretrain_cli(["fit", *args[1:], "--print_config"])
            except SystemExit as exit_:
                if exit_.code not in (0, None):
                    raise AssertionError(f"`ssl-toolkit {shlex.join(args)}` does not parse: {err.getvalue()[-1500:]}")
            else:
                raise AssertionError(f"`ssl-toolkit {shlex.join(args)} --print_config` did not stop after printing")
        return "pretrain"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise AssertionError(f"`ssl-toolkit {shlex.join(args)}` does not parse: {err.getvalue()[-800:]}")
            return " ".join(a for a in args if not a.startswith("-"))  # --help
    return " ".join(str(v) for k, v in vars(parsed).items() if k == "command" or k.endswith("_command") or k == "what")
