"""The vocabulary-wide logprob kernels (`rlpost.logprobs.ChunkKernels`): compiled by torch.compile on CUDA, eager
elsewhere. Here on the CPU: the per-chunk functions compiled through inductor's CPU backend give what the eager ones
give (logprobs, entropies, gradients; two row counts, so the second compile has a dynamic row count), and a
compile that fails leaves one line and the eager functions. The CUDA case is `tests/test_gpu.py`."""

from __future__ import annotations

import shutil

import pytest
import torch

from rlpost import logprobs as lp


def _run(logits: torch.Tensor, targets: torch.Tensor, kernels: lp.ChunkKernels | None):
    x = logits.detach().requires_grad_()
    out, entropy = lp.token_logprobs_and_entropy(x, targets, 0.7, kernels=kernels)
    (grad,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum(), x)
    return out, entropy, grad


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor's CPU backend needs a C++ compiler")
def test_compiled_chunk_kernels_match_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lp, "CHUNK_BYTES", 4 * 64 * 5)  # 5 rows a chunk: full chunks and a shorter last one
    kernels = lp.ChunkKernels(devices=("cpu",))
    torch.manual_seed(0)
    for shape in ((2, 7, 64), (3, 9, 64)):
        logits = torch.randn(shape) * 3
        targets = torch.randint(0, shape[-1], shape[:2])
        for got, want in zip(_run(logits, targets, kernels), _run(logits, targets, None), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not kernels.failed


def test_a_failed_compile_leaves_one_line_and_the_eager_kernels(capsys: pytest.CaptureFixture) -> None:
    def no_triton(graph, example_inputs):
        raise RuntimeError("Cannot find a working triton installation")

    kernels = lp.ChunkKernels(devices=("cpu",), backend=no_triton)
    logits, targets = torch.randn(2, 3, 16), torch.randint(0, 16, (2, 3))
    for _ in range(2):  # the second call goes straight to the eager functions
        for got, want in zip(_run(logits, targets, kernels), _run(logits, targets, None), strict=True):
            assert torch.equal(got, want)
    lines = capsys.readouterr().out.strip().splitlines()
    assert kernels.failed and len(lines) == 1
    assert lines[0].startswith("[rlpost] torch.compile of the vocabulary-wide logprob kernels failed")
    assert "Cannot find a working triton installation" in lines[0] and lines[0].endswith("running them eagerly")
