"""The docs run: every ```python block of docs/*.md is executed (blocks of one page in order, in one
namespace, in a scratch directory), and every `ssl-toolkit …` command shown in a shell block parses.

A block preceded by ``<!-- skip-test -->`` is neither run nor parsed: only for what cannot run here
(several machines, a GPU, an API that has not landed yet). A page whose blocks start from a file a user
would already have (the RL adapter page exports a pretraining checkpoint) gets a real one in its
scratch directory first.
"""
from __future__ import annotations

import re
import shutil
import sys
import textwrap
import types
from pathlib import Path

import pytest

from cli_commands import check_toolkit_args, shell_commands, toolkit_args

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"(<!--\s*skip-test\s*-->\s*)?```(\w+)\n(.*?)```", re.S)


def blocks(path: Path, language: str) -> list[tuple[int, str]]:
    """``(line, code)`` of the fenced blocks in ``language`` not marked skip-test."""
    text = path.read_text()
    out = []
    for m in BLOCK.finditer(text):
        skip, lang, code = m.groups()
        if lang == language and not skip:
            # a block inside a list item is indented with it
            out.append((text.count("\n", 0, m.start(2)) + 1, textwrap.dedent(code)))
    return out


def test_every_doc_page_is_here():
    names = {p.name for p in DOCS}
    assert {"adding_a_method.md", "adding_a_backbone.md", "data_formats.md", "multi_node.md",
            "experiment_tracking.md", "rl_adapter.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path, tmp_path, monkeypatch, request):
    code_blocks = blocks(path, "python")
    if not code_blocks:
        pytest.skip(f"{path.name} has no runnable python block")
    if path.name == "rl_adapter.md":  # its first block exports the checkpoint of a real VICReg run
        _, ckpt = request.getfixturevalue("vicreg_checkpoint")
        (tmp_path / "runs/vicreg_atari/checkpoints").mkdir(parents=True)
        shutil.copy(ckpt, tmp_path / "runs/vicreg_atari/checkpoints/last.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # examples/ holds the worked examples the pages import (byol.py)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    # a real module: timm's register_model looks the defining module up in sys.modules
    module = types.ModuleType(f"docs_{path.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for line, code in code_blocks:
        try:
            exec(compile(code, f"{path.name}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"{path.name}, block at line {line} failed: {type(err).__name__}: {err}") from err


def _commands(path: Path) -> list[list[str]]:
    text = path.read_text()
    # drop skip-test blocks before looking for commands
    kept = BLOCK.sub(lambda m: "" if m.group(1) else m.group(0), text)
    return [args for args in map(toolkit_args, shell_commands(kept)) if args is not None]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_shown_commands_parse(path, monkeypatch):
    commands = _commands(path)
    if not commands:
        pytest.skip(f"{path.name} shows no ssl-toolkit command")
    monkeypatch.chdir(ROOT)  # commands are shown from the repository root (configs/…)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # PYTHONPATH=examples in the BYOL commands
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for args in commands:
        check_toolkit_args(args)


def test_commands_are_found():
    # the extraction itself: a continued `docker run`, a torchrun line, an srun line, a plain command
    text = ("```bash\nssl-toolkit plot runs/demo  # figures\n"
            "srun ssl-toolkit pretrain --config c.yaml \\\n    --trainer.num_nodes \"$SLURM_NNODES\"\n"
            "torchrun --nproc-per-node 8 -m ssl_toolkit.cli demo --steps 3\n"
            "docker build -t ssl-toolkit:gpu .\n```\n")
    found = [toolkit_args(c) for c in shell_commands(text)]
    assert found == [["plot", "runs/demo"], ["pretrain", "--config", "c.yaml", "--trainer.num_nodes", "2"],
                     ["demo", "--steps", "3"], None]
    with pytest.raises(AssertionError, match="does not parse"):
        check_toolkit_args(["plot", "runs/demo", "--no-such-flag"])

