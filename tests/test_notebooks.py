"""The example notebooks run: each is executed top to bottom in a fresh kernel (this venv's Python) in a
scratch directory, and what it wrote under ``runs/notebook_XX/`` is checked. The notebooks in git are
stored stripped (no outputs, no execution counts, minimal metadata) and are what
``notebooks/make_notebooks.py`` writes.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from cli_commands import check_toolkit_args, shell_commands, toolkit_args

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = ["01_quickstart.ipynb", "02_linear_probe.ipynb", "03_rl_adapter.ipynb"]
PYTHON_CHECK = "import sys; print(sys.executable)"


def execute(name: str, work_dir: Path) -> nbformat.NotebookNode:
    """Run notebook ``name`` with ``work_dir`` as the kernel's working directory; a first cell (added to
    this in-memory copy only) reports the kernel's interpreter."""
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PYTHON_CHECK))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(work_dir)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def stdout_of(cell: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def inline_images(nb: nbformat.NotebookNode) -> int:
    """How many PNGs the executed notebook displayed."""
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.outputs)


# ---- the checks of what each notebook wrote --------------------------------------------------------
def check_quickstart(run: Path, nb: nbformat.NotebookNode) -> None:
    from ssl_toolkit import load_encoder
    from ssl_toolkit.data.atari import collect_summary
    from ssl_toolkit.plots import read_metrics

    for png in ("loss.png", "collapse.png", "atariari_pretrained.png", "atariari_random.png"):
        assert (run / "plots" / png).stat().st_size > 1000, png
    steps = {step for step, _ in read_metrics(run / "metrics.csv")["train/loss"]}
    encoder = load_encoder(run / "encoder.safetensors")
    meta = encoder.encoder_meta
    assert meta["backbone"] == "nature_cnn" and meta["method"] == "VICReg"
    assert meta["steps"] == len(steps) == max(steps) + 1  # one logged loss per trained step
    pretrain_frames = collect_summary(run / "frames")["frames"]
    for name in ("pretrained", "random"):
        result = json.loads((run / f"atariari_{name}.json").read_text())
        assert result["pretrain_frames"] == pretrain_frames  # probed on the frames after the pretraining ones
        assert 0.0 <= result["score_f1"] <= 1.0 and result["categories_f1"]
    assert inline_images(nb) == 4  # the loss and collapse figures and both bar charts


def check_linear_probe(run: Path, nb: nbformat.NotebookNode) -> None:
    summary = json.loads((run / "probe.json").read_text())
    linear, again, knn = summary["linear"], summary["linear_again"], summary["knn"]
    classes = sorted(p.name for p in (run / "data" / "train").iterdir())
    val_images = sum(1 for _ in (run / "data" / "val").glob("*/*.jpg"))
    assert linear["num_classes"] == len(classes) >= 4 and linear["num_val"] == val_images
    chance = 100.0 / len(classes)
    assert linear["top1"] > chance and knn["best"]["top1"] > chance
    assert not any(split["cached"] for split in linear["features"].values())  # first run: extracted
    assert all(split["cached"] for split in again["features"].values())       # second run: from the cache
    assert again["top1"] == linear["top1"]
    cli = json.loads((run / "cli_linear.json").read_text())
    assert all(split["cached"] for split in cli["features"].values())         # the CLI read the same cache
    assert (run / "embeddings.png").stat().st_size > 1000
    assert inline_images(nb) == 2  # the screens of the games, the embeddings


def check_rl_adapter(run: Path, nb: nbformat.NotebookNode) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_trained"] == summary["steps_requested"]
    with open(run / "episodes.csv", newline="") as f:
        games = list(csv.DictReader(f))
    assert len(games) == summary["games_finished"] >= 1
    for game in games:  # raw Pong scores: -21 … 21 over a whole game
        assert -21 <= float(game["score"]) <= 21 and int(game["length"]) > 0
        assert 0 < int(game["agent_step"]) <= summary["steps_trained"]
    assert (run / "encoder.safetensors").is_file() and (run / "ppo_agent.zip").is_file()
    assert (run / "scores.png").stat().st_size > 1000
    assert inline_images(nb) == 1
    # the policy trains only its heads: fewer trainable parameters than the frozen encoder alone holds
    from ssl_toolkit import load_encoder

    encoder_params = sum(p.numel() for p in load_encoder(run / "encoder.safetensors").parameters())
    assert 0 < summary["trainable_parameters"] < encoder_params


CHECKS = {
    "01_quickstart.ipynb": ("notebook_01", check_quickstart),
    "02_linear_probe.ipynb": ("notebook_02", check_linear_probe),
    "03_rl_adapter.ipynb": ("notebook_03", check_rl_adapter),
}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    # the kernel (and what it starts) inherits this environment
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # one torch thread: on two busy cores more threads wait on each other (VICReg steps and PPO run
    # several times faster here with one)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = execute(name, tmp_path)
    assert stdout_of(nb.cells[0]).strip() == sys.executable, "the kernel does not run this venv's Python"
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    run_name, check = CHECKS[name]
    # everything under runs/notebook_XX/, nothing beside it
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run_name]
    check(tmp_path / "runs" / run_name, nb)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped(name):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["language_info"] == {"name": "python"}
    for cell in nb.cells:
        assert cell.metadata == {}, f"cell {cell.id} has metadata"
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {cell.id} has outputs"
            assert cell.execution_count is None, f"cell {cell.id} has an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_shown_commands_parse(name, monkeypatch):
    """Every `ssl-toolkit …` line in a shell block of a markdown cell has a real subcommand and flags."""
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    markdown = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    commands = [args for args in map(toolkit_args, shell_commands(markdown)) if args is not None]
    if not commands:
        pytest.skip(f"{name} shows no ssl-toolkit command in a shell block")
    monkeypatch.chdir(ROOT)  # shown from the repository root (configs/…)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for args in commands:
        check_toolkit_args(args)


def test_notebooks_match_their_generator():
    """``notebooks/make_notebooks.py`` holds the cell sources; the .ipynb files are its output."""
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOK_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(module.NOTEBOOKS) == NOTEBOOKS
    for name in NOTEBOOKS:
        assert (NOTEBOOK_DIR / name).read_text() == module.render(name), (
            f"{name} differs from what notebooks/make_notebooks.py writes; edit the script and rerun it")
