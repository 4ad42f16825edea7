"""Small assertions shared by the pure-function test files."""

import torch


def close(actual, expected, atol=1e-5):
    """Elementwise equal within `atol` (no relative tolerance), after converting both sides to float tensors."""
    actual, expected = torch.as_tensor(actual).float(), torch.as_tensor(expected).float()
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)
