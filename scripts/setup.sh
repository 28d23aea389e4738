#!/usr/bin/env bash
# Sets up laser-tool on a fresh machine: a virtual environment in .venv with the package and its
# test tools, and (where apt-get is available) the real Fashion-MNIST data set from Debian.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# x-transformers warns about torch.jit.script under torch 2.14 on import: not ours, not the user's concern.
check='import warnings; warnings.simplefilter("ignore", FutureWarning); import laser_tool, trainers, pytest, x_transformers, timm, submitit, tensorboard, onnx, onnxruntime, onnxscript, vit_pytorch'
if ! .venv/bin/python -c "$check" 2>/dev/null; then
    # PYTHONWARNINGS: setuptools' build backend prints screens of notes about editable installs.
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e ".[dev,export]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "$check"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
    if $SUDO true 2>/dev/null; then
        $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
            || echo "setup: could not install dataset-fashion-mnist; the real-data tests will be skipped" >&2
    else
        echo "setup: run 'sudo apt-get install dataset-fashion-mnist' for the real Fashion-MNIST data" >&2
    fi
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
