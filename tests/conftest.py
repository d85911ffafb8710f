"""Test setup.

Without a GPU the Triton kernels run under the interpreter on CPU tensors:
TRITON_INTERPRET must be set before triton is imported (triton.jit reads it at
decoration time), so it is set here, before any test module imports distr_patch.
On a CUDA machine the kernels compile for the GPU and the `gpu` tests run.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
