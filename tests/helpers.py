"""Helpers shared by the test files: tolerances, configs, ports."""

import socket

import torch


def close(actual, expected, atol=1e-5):
    """Elementwise equal within `atol` (no relative tolerance), after converting both sides to float tensors."""
    actual, expected = torch.as_tensor(actual).float(), torch.as_tensor(expected).float()
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def make(*overrides: str):
    """The config `rlpost-train OVERRIDES...` runs with: the debug experiment unless the overrides pick another."""
    from rlpost.train import compose_config

    experiment = [] if any(o.startswith("experiment=") for o in overrides) else ["experiment=gsm8k_grpo_debug"]
    return compose_config([*experiment, *overrides])


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
