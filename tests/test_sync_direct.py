"""rlpost.sync.direct: where a sent tensor lands in an engine that fuses modules, and that straight copies are used
only where a first pass through the engine's own loader proved them, with every other tensor still loaded by it."""

from __future__ import annotations

import torch

from rlpost.sync.buckets import TensorSpec, flatten, plan_buckets, unflatten
from rlpost.sync.direct import DirectCopy, landing_rows

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}


def specs_of(shapes: dict[str, tuple[int, ...]]) -> dict[str, TensorSpec]:
    return {n: TensorSpec(n, s, torch.float32) for n, s in shapes.items()}


def test_landing_rows_by_hand() -> None:
    sent = specs_of({"l.0.attn.q_proj.weight": (4, 3), "l.0.attn.k_proj.weight": (2, 3),
                     "l.0.attn.v_proj.weight": (2, 3), "l.0.norm.weight": (3,), "embed.weight": (10, 3)})
    params = {"l.0.attn.qkv_proj.weight": torch.zeros(8, 3), "l.0.norm.weight": torch.zeros(3),
              "embed.weight": torch.zeros(12, 3)}  # a padded vocabulary: 12 rows for 10
    where = {n: landing_rows(s, params, PACKED, sent) for n, s in sent.items()}
    assert where == {"l.0.attn.q_proj.weight": ("l.0.attn.qkv_proj.weight", 0),
                     "l.0.attn.k_proj.weight": ("l.0.attn.qkv_proj.weight", 4),  # after q's 4 rows
                     "l.0.attn.v_proj.weight": ("l.0.attn.qkv_proj.weight", 6),  # after q's 4 and k's 2
                     "l.0.norm.weight": ("l.0.norm.weight", 0),
                     "embed.weight": None}  # shapes differ: left to the loader
    # A tensor-parallel shard of qkv (half the rows) holds no whole q: nothing lands whole.
    shard = {"l.0.attn.qkv_proj.weight": torch.zeros(4, 3)}
    assert landing_rows(sent["l.0.attn.k_proj.weight"], shard, PACKED, sent) is None


class FusingEngine:
    """An engine model in vLLM's layout: q/k/v fused into one parameter, and a loader per tensor that narrows
    and copies; `scale` is stored doubled by its loader (a transforming loader, which must never be bypassed)."""

    def __init__(self) -> None:
        self.params = {"attn.qkv_proj.weight": torch.zeros(8, 3), "norm.weight": torch.zeros(3),
                       "scale.weight": torch.zeros(3)}
        self.loaded: list[str] = []

    def load_weights(self, named: list[tuple[str, torch.Tensor]]) -> None:
        rows = {"q_proj": (0, 4), "k_proj": (4, 6), "v_proj": (6, 8)}
        for name, tensor in named:
            self.loaded.append(name)
            module = name.split(".")[-2]
            if module in rows:
                a, b = rows[module]
                self.params["attn.qkv_proj.weight"][a:b].copy_(tensor)
            elif module == "scale":
                self.params[name].copy_(2 * tensor)
            else:
                self.params[name].copy_(tensor)


def test_direct_copies_only_what_the_loader_proved() -> None:
    engine = FusingEngine()
    shapes = {"attn.q_proj.weight": (4, 3), "attn.k_proj.weight": (2, 3), "attn.v_proj.weight": (2, 3),
              "norm.weight": (3,), "scale.weight": (3,)}
    plan = plan_buckets(specs_of(shapes).values(), 60)  # 3 buckets: several, with mixed fates in one
    assert len(plan) > 1
    direct = DirectCopy(plan, engine.params, PACKED)
    for version in range(3):
        sent = {n: torch.randn(s) for n, s in shapes.items()}
        engine.loaded.clear()
        for i, bucket in enumerate(plan):
            flat = flatten([sent[s.name] for s in bucket.specs], bucket)
            direct.load(i, unflatten(flat, bucket), engine.load_weights)
        qkv = engine.params["attn.qkv_proj.weight"]
        assert torch.equal(qkv, torch.cat([sent["attn.q_proj.weight"], sent["attn.k_proj.weight"],
                                           sent["attn.v_proj.weight"]]))
        assert torch.equal(engine.params["norm.weight"], sent["norm.weight"])
        assert torch.equal(engine.params["scale.weight"], 2 * sent["scale.weight"])  # never bypassed
        if version == 0:  # learning: every tensor went through the loader (scale twice: tried, then loaded)
            assert sorted(engine.loaded) == sorted([*shapes, "scale.weight"])
        else:
            assert engine.loaded == ["scale.weight"]
    assert direct.num_direct == 4
