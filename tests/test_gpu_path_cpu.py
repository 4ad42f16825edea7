"""The parts of the GPU path that run on CPU: chunked logprobs (values and gradients against the plain formula),
the wire format of vLLM worker-extension calls, placement errors, and the one-line error extraction."""

from __future__ import annotations

import importlib.util

import pytest
import ray
import torch
from helpers import make

from rlpost import logprobs as lp
from rlpost.config import ConfigError, RunError
from rlpost.rollout.vllm_worker import info_from_wire, plan_from_wire, plan_to_wire
from rlpost.sync.buckets import Bucket, TensorSpec
from rlpost.sync.transport import SyncGroupInfo
from rlpost.train import user_error
from rlpost.validate import validate

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_token_logprobs_match_log_softmax(monkeypatch, temperature: float) -> None:
    monkeypatch.setattr(lp, "CHUNK_BYTES", 4 * 11 * 3)  # 3 rows per chunk over 2 x 5 rows: uneven last chunk
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    plain = torch.log_softmax(logits / temperature, -1).gather(-1, targets[..., None]).squeeze(-1)
    chunked = lp.token_logprobs(logits, targets, temperature)
    assert chunked.dtype == torch.float32 and chunked.shape == (2, 5)
    assert torch.allclose(chunked.double(), plain, atol=1e-6)
    weights = torch.randn(2, 5, dtype=torch.float64)
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), logits)
    (g_chunked,) = torch.autograd.grad((chunked.double() * weights).sum(), logits)
    assert torch.allclose(g_chunked, g_plain, atol=1e-6)


def test_chunked_logprob_gradient_by_hand() -> None:
    """Two tokens, logits (0, 0), target 0, T = 1: logprob = log 1/2, d/dlogits = (1 - 1/2, -1/2)."""
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    out = lp.token_logprobs(logits, torch.tensor([[0]]))
    assert out.item() == pytest.approx(-0.6931472)
    out.sum().backward()
    assert logits.grad.view(-1).tolist() == pytest.approx([0.5, -0.5])


def test_token_entropy_matches_formula(monkeypatch) -> None:
    """The entropy computed beside the logprobs, chunk by chunk (two rows a chunk here), is -sum p log p of
    softmax(logits / T); the logprobs and their gradient are the same as without it, and the logits untouched."""
    monkeypatch.setattr(lp, "CHUNK_BYTES", 4 * 4 * 2)
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]], requires_grad=True)
    targets = torch.tensor([[0, 1, 3]])
    before = logits.detach().clone()
    logprobs, entropy = lp.token_logprobs_and_entropy(logits, targets, 2.0)
    p = torch.softmax(before / 2.0, -1)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1))
    assert not entropy.requires_grad and torch.equal(logits.detach(), before)
    (grad,) = torch.autograd.grad(logprobs.sum(), logits)
    alone = logits.detach().clone().requires_grad_()
    (grad_alone,) = torch.autograd.grad(lp.token_logprobs(alone, targets, 2.0).sum(), alone)
    assert torch.equal(logprobs, lp.token_logprobs(before, targets, 2.0)) and torch.equal(grad, grad_alone)
    assert torch.allclose(logprobs, torch.log_softmax(before / 2.0, -1).gather(-1, targets[..., None])[..., 0])
    # Uniform over 4 tokens: log 4.
    uniform = lp.token_logprobs_and_entropy(torch.zeros(1, 1, 4), torch.tensor([[0]]))[1]
    assert uniform.item() == pytest.approx(torch.log(torch.tensor(4.0)).item())


def test_worker_extension_wire_format_round_trips() -> None:
    plan = [Bucket((TensorSpec("a.weight", (4, 3), torch.bfloat16), TensorSpec("a.bias", (4,), torch.bfloat16))),
            Bucket((TensorSpec("b", (2,), torch.float32),))]
    wire = plan_to_wire(plan)
    assert wire[0][0] == ["a.weight", [4, 3], "bfloat16"]
    assert plan_from_wire(wire) == plan
    info = SyncGroupInfo("ipc", "", 0, 0, 30.0, ipc_senders={"GPU-1": ("10.0.0.1", 123, 2)}, slot_bytes=64)
    from dataclasses import asdict

    assert info_from_wire(asdict(info)) == info



def test_gpu_cluster_presets_compose() -> None:
    single = make("cluster=single_gpu")
    assert (single.cluster.device, single.cluster.colocate, single.rollout.engine) == ("cuda", True, "vllm")
    assert single.learner.num_ranks == single.rollout.num_engines == 1  # the preset wins over the experiment
    assert make("cluster=single_gpu", "rollout.engines_per_gpu=2").rollout.num_engines == 2  # one GPU hosts both
    split = make("cluster=split", "rollout.num_engines=2", "rollout.tensor_parallel_size=2")
    assert (split.cluster.colocate, split.rollout.num_engines, split.rollout.tensor_parallel_size) == (False, 2, 2)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message a machine without a GPU gets")
def test_gpu_cluster_without_gpu_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^cluster=single_gpu needs a GPU .*cluster=debug_cpu"):
        validate(make("cluster=single_gpu"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_is_one_line() -> None:
    # With a remote cluster address the GPU check is the cluster's; the vLLM check still runs on the driver.
    with pytest.raises(ConfigError, match=r"vLLM is not installed; pip install 'rlpost\[vllm\]'"):
        validate(make("cluster=split", "cluster.address=ray://head:10001"))


@pytest.mark.parametrize("overrides, field", [
    (["rollout.engine=vllm"], "rollout.engine"),  # cpu cluster
    (["sync.transport=nccl"], "sync.transport"),  # cpu cluster
    (["cluster.colocate=true"], "cluster.colocate"),
    (["cluster.device=tpu"], "cluster.device"),
])
def test_placement_errors_name_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(make(*overrides))
    assert field in str(err.value) and "\n" not in str(err.value)


def test_user_error_unwraps_ray_errors() -> None:
    assert user_error(ConfigError("a.b=1: fix it")) == "a.b=1: fix it"
    assert user_error(ValueError("other")) is None
    try:
        raise RunError("sync: weight sync did not finish")
    except RunError as inner:
        wrapped = ray.exceptions.RayTaskError("send_weights", "traceback", inner)
    assert user_error(wrapped) == "sync: weight sync did not finish"
    # An actor whose __init__ raised: only the text survives in ActorDiedError's message.
    died = RuntimeError("The actor died because of an error raised in its creation task, ray::VLLMEngine.__init__"
                        "()\nrlpost.config.RunError: rollout: vLLM could not start (ValueError: no memory)")
    assert user_error(died) == "rollout: vLLM could not start (ValueError: no memory)"


class _WakeUpFails:
    """Stands in for `vllm.LLM` (not installable on the CPU machines) where only its `wake_up` error matters."""

    def __init__(self, message: str) -> None:
        self.message = message

    def wake_up(self, tags: list[str]) -> None:
        raise Exception(self.message)  # what vLLM's LLM.wake_up raises when its engine core fails


def test_engine_wake_up_out_of_memory_is_one_line() -> None:
    """A colocated engine that cannot re-allocate its memory (session 8's PPO run: the learner and critic held
    more than the engines' shares left) names the two settings to lower; other errors pass through unchanged."""
    from rlpost.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM here: only the wake-up path is under test
    engine.asleep, engine._engine_args = True, {"gpu_memory_utilization": 0.25}
    engine.llm = _WakeUpFails("Call to wake_up method failed: CUDA Error: out of memory at "
                              "/workspace/csrc/cumem_allocator.cpp:163")
    with pytest.raises(RunError) as err:
        engine.wake_up(["kv_cache"])
    message = user_error(ray.exceptions.RayTaskError("wake_up", "traceback", err.value))
    assert message is not None and "\n" not in message
    assert "take its kv_cache back" in message and "rollout.gpu_memory_utilization=0.25" in message
    assert "learner.micro_batch_size" in message and engine.asleep
    engine.llm = _WakeUpFails("Call to wake_up method failed: something else")
    with pytest.raises(Exception, match="something else"):
        engine.wake_up(["weights"])


def test_engine_args_size_the_kv_cache_from_kv_cache_gb_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlpost.rollout.vllm_engine
    from rlpost.rollout.vllm_engine import engine_args

    common = dict(model_path="/m", dtype="bfloat16", tensor_parallel_size=1, gpu_memory_utilization=0.35,
                  max_model_len=768, enforce_eager=False, sleep_level=2, seed=0)
    by_share = engine_args(kv_cache_gb=0.0, **common)
    assert "kv_cache_memory_bytes" not in by_share and by_share["gpu_memory_utilization"] == 0.35
    assert by_share["enable_sleep_mode"] and by_share["distributed_executor_backend"] == "uni"
    assert engine_args(kv_cache_gb=4.5, **common)["kv_cache_memory_bytes"] == 4.5 * 2**30
    # Validated as a job for a GPU cluster from this machine (vLLM is the GPU machine's install).
    monkeypatch.setattr(rlpost.rollout.vllm_engine, "check_vllm", lambda: None)
    with pytest.raises(ConfigError, match=r"^rollout.kv_cache_gb=-1.0: must be >= 0"):
        validate(make("cluster=single_gpu", "cluster.address=ray://head:10001", "rollout.kv_cache_gb=-1"))


def test_fp32_buffers_survive_a_bf16_cast() -> None:
    """What DeepSpeed's bf16 set-up does to a module (`.bfloat16()`), undone for buffers only."""
    from rlpost.learner.actor import fp32_buffers_kept

    class Rotary(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("inv_freq", torch.tensor([1.0, 0.7498942]), persistent=False)
            self.proj = torch.nn.Linear(2, 2)

    model = torch.nn.Sequential(Rotary())
    with fp32_buffers_kept(model):
        model.bfloat16()
    assert model[0].proj.weight.dtype == torch.bfloat16
    assert model[0].inv_freq.dtype == torch.float32 and model[0].inv_freq[1].item() == pytest.approx(0.7498942)
