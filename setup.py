"""Builds csrc/ into one pybind11 module, aefast._C, through CMakeLists.txt.

CUDA sources are compiled too when a CUDA toolkit is found and AEFAST_CUDA is not "0".
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        config = "Debug" if self.debug else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DAEFAST_CUDA={os.environ.get('AEFAST_CUDA', 'AUTO')}",
            f"-DAEFAST_SANITIZE={os.environ.get('AEFAST_SANITIZE', '0')}",
        ]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", config, "-j", jobs], cwd=build_dir, check=True)


setup(
    name="aefast",
    version="0.1.0",
    description="Fused autoencoder kernels for PyTorch: MLP, reparameterize+KL, Willshaw memory",
    packages=find_packages(include=["aefast", "aefast.*"]),
    python_requires=">=3.10",
    # A range, not a bare name: an installed torch (a GPU user's own) satisfies it and stays.
    install_requires=["torch>=2.4", "numpy>=1.24", "tqdm>=4.60", "safetensors>=0.4", "scikit-learn>=1.2",
                      "matplotlib>=3.7"],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest>=8", "pytest-benchmark>=4", "pytest-xdist>=3", "hypothesis>=6", "matplotlib>=3.7",
                 "pybind11>=2.10"],  # pybind11: the nvcc compile tests build csrc/willshaw as CMake does
    },
    ext_modules=[CMakeExtension("aefast._C")],
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["aefast=aefast.cli:main"]},
    zip_safe=False,
)
