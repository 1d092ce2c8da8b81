"""Checking ``.gpu/`` before it travels (``make gpu-check``: ``python -m pqattack.gpu.prep .gpu``): the wheels the
GPU machine lacks, each installable there with its requirements met, the data archive, and the size one device call
carries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# What the GPU machine's Python 3.12 has (the image's packages this project relies on, and their own requirements),
# and what .gpu/wheels must bring for pqattack's imports, its Hydra launchers and the tests.
GPU_IMAGE = {"torch", "torchvision", "pytorch-lightning", "torchmetrics", "matplotlib", "numpy", "pillow", "pyyaml",
             "tqdm", "rich", "pytest", "packaging", "typing-extensions", "lightning-utilities", "fsspec", "filelock",
             "jinja2", "sympy", "networkx", "setuptools", "scikit-learn"}
GPU_WHEELS = ("faiss-cpu", "hydra-core", "omegaconf", "antlr4-python3-runtime", "hydra-submitit-launcher",
              "hydra-joblib-launcher", "submitit", "cloudpickle", "joblib")
GPU_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
              "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
TRAVEL_BYTES = 64 * 2**20  # the working tree and .gpu/ together, per device call


def installable(wheel: Path) -> bool:
    """Whether a wheel installs on CPython 3.12, Linux x86-64."""
    from packaging.utils import parse_wheel_filename

    for tag in parse_wheel_filename(wheel.name)[3]:
        py = tag.interpreter in ("py3", "cp312", "py312") or (tag.abi == "abi3" and tag.interpreter.startswith("cp3")
                                                             and int(tag.interpreter[3:]) <= 12)
        abi = tag.abi in ("none", "abi3", "cp312")
        plat = tag.platform == "any" or (tag.platform.endswith("x86_64") and "linux" in tag.platform)
        if py and abi and plat:
            return True
    return False


def check_prep(folder: Path) -> int:
    """Check ``folder`` (.gpu/) before it travels: the wheels pqattack needs, each installable on the GPU machine's
    Python and with every requirement met there (by another wheel or by the image), one version of each, the data
    archive, and the size of the tree plus .gpu/ under what one device call carries."""
    import zipfile
    from email.parser import Parser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    problems, have = [], {}
    wheels = sorted((folder / "wheels").glob("*.whl"))
    for w in wheels:
        name, version = canonicalize_name(parse_wheel_filename(w.name)[0]), parse_wheel_filename(w.name)[1]
        if name in have:
            problems.append(f"two versions of {name}: {have[name][0]} and {version} (pip --target refuses both)")
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            requires = Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []
        have[name] = (version, requires)
        if not installable(w):
            problems.append(f"{w.name} does not install on CPython 3.12, Linux x86-64")
    for name in GPU_WHEELS:
        if name not in have:
            problems.append(f"no wheel of {name} in {folder / 'wheels'}")
    for name, (_, requires) in have.items():
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(GPU_PYTHON):
                continue
            dep = canonicalize_name(req.name)
            if dep in have:
                if req.specifier and not req.specifier.contains(have[dep][0], prereleases=True):
                    problems.append(f"{name} needs {text}, the wheel is {dep} {have[dep][0]}")
            elif dep not in GPU_IMAGE:
                problems.append(f"{name} needs {text}: neither a wheel here nor on the GPU machine")
    archive = folder / "cifar10-jpeg.tar.xz"
    if not archive.is_file():
        problems.append(f"no {archive} (the CIFAR-10 JPEG copy)")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    tree = sum((REPO / f).stat().st_size for f in tracked.stdout.split("\0") if f and (REPO / f).is_file()) \
        if tracked.returncode == 0 else 0
    print(f"{folder}: {len(wheels)} wheels, {size / 2**20:.1f} MiB; with the tracked tree "
          f"({tree / 2**20:.1f} MiB): {(size + tree) / 2**20:.1f} MiB of the {TRAVEL_BYTES / 2**20:.0f} MiB a call carries")
    if size + tree > TRAVEL_BYTES:
        problems.append(f"{(size + tree) / 2**20:.1f} MiB would travel, over {TRAVEL_BYTES / 2**20:.0f} MiB")
    for line in problems:
        print(f"  problem: {line}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 2


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m pqattack.gpu.prep", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the folder to check, e.g. .gpu (make gpu-check)")
    return check_prep(p.parse_args(argv).folder)


if __name__ == "__main__":
    sys.exit(main())
