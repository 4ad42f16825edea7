"""Receiving weights without the engine's per-tensor loader: straight copies into the engine's parameters.

An engine's `load_weights` (vLLM's especially) costs Python work per tensor: name mapping, finding the fused
parameter, a weight loader that narrows and copies. For a 0.5B model that is ~300 calls and most of a sync's time,
while for almost every tensor the work it does is "copy these bytes to rows [a, b) of that parameter". This module
learns that, once, and afterwards moves a whole bucket with one multi-tensor copy (`torch._foreach_copy_`).

Where each sent tensor should land is a guess from names: the parameter of the same name and shape, or, for a
module the engine fuses (vLLM's `packed_modules_mapping`, e.g. q/k/v -> qkv_proj, gate/up -> gate_up_proj), the
fused parameter's rows after those of the parts listed before it. A guess is used only once proven: at the first
receive, the target rows are filled with NaN, the tensor goes through `load_weights` alone, and the rows must then
hold exactly the sent bytes (the rows are restored if not). Everything not proven -- tensor-parallel shards,
padded vocabularies, loaders that transform values -- keeps going through `load_weights`, every sync. (What the
proof cannot see: a loader that also writes the tensor to a second place. Tied weights share one parameter, so
they do not.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlpost.sync.buckets import Bucket, TensorSpec

NamedTensors = list[tuple[str, torch.Tensor]]
Loader = Callable[[NamedTensors], None]


def landing_rows(spec: TensorSpec, params: dict[str, torch.Tensor], packed: dict[str, list[str]],
                 specs: dict[str, TensorSpec]) -> tuple[str, int] | None:
    """The engine parameter and first row that `spec` is expected to occupy whole, or None when no parameter
    fits (`specs`: every sent tensor by name, for the sizes of a fused parameter's earlier parts)."""
    own = params.get(spec.name)
    if own is not None:
        return (spec.name, 0) if tuple(own.shape) == spec.shape else None
    module_path, _, leaf = spec.name.rpartition(".")
    parent, _, module = module_path.rpartition(".")
    for fused, parts in packed.items():
        if module not in parts:
            continue
        target = params.get(f"{parent}.{fused}.{leaf}" if parent else f"{fused}.{leaf}")
        earlier = [specs.get(f"{parent}.{p}.{leaf}" if parent else f"{p}.{leaf}") for p in
                   parts[:parts.index(module)]]
        if target is None or None in earlier or not spec.shape:
            return None
        row = sum(s.shape[0] for s in earlier)
        if tuple(target.shape[1:]) != spec.shape[1:] or row + spec.shape[0] > target.shape[0]:
            return None
        return (f"{parent}.{fused}.{leaf}" if parent else f"{fused}.{leaf}"), row
    return None


class DirectCopy:
    """Per bucket of `plan`: which of its tensors are copied straight into `params` and where.

    `params`: the engine's parameters by name; `packed`: fused module name -> the names of the modules it fuses,
    in row order. `load(i, named, loader)` receives bucket i: the first time through the loader, proving guesses
    as it goes; afterwards the proven tensors with one `_foreach_copy_` and the rest through the loader."""

    def __init__(self, plan: list[Bucket], params: dict[str, torch.Tensor],
                 packed: dict[str, list[str]] | None = None) -> None:
        self.plan, self.params, self.packed = plan, params, dict(packed or {})
        self._specs = {s.name: s for b in plan for s in b.specs}
        # Per bucket, once learned: (index of the tensor in the bucket, destination view) of each proven tensor.
        self._direct: dict[int, list[tuple[int, torch.Tensor]]] = {}

    @property
    def num_direct(self) -> int:
        return sum(len(d) for d in self._direct.values())

    def _destination(self, spec: TensorSpec) -> torch.Tensor | None:
        found = landing_rows(spec, self.params, self.packed, self._specs)
        if found is None or not spec.dtype.is_floating_point:  # NaN is the proof's sentinel
            return None
        name, row = found
        param = self.params[name]
        if param.dtype != spec.dtype:
            return None
        return param.data[row:row + spec.shape[0]].view(spec.shape) if spec.shape else param.data

    @torch.no_grad()
    def _learn(self, index: int, named: NamedTensors, loader: Loader) -> None:
        proven, rest = [], []
        for k, (name, tensor) in enumerate(named):
            dst = self._destination(self.plan[index].specs[k])
            if dst is None:
                rest.append((name, tensor))
                continue
            before = dst.clone()
            dst.fill_(float("nan"))
            loader([(name, tensor)])
            if torch.equal(dst, tensor):
                proven.append((k, dst))
            else:  # the loader put it elsewhere or changed it: undo the sentinel, load it properly below
                dst.copy_(before)
                rest.append((name, tensor))
        if rest:
            loader(rest)
        self._direct[index] = proven

    @torch.no_grad()
    def load(self, index: int, named: NamedTensors, loader: Loader) -> None:
        direct = self._direct.get(index)
        if direct is None:
            self._learn(index, named, loader)
            if len(self._direct) == len(self.plan):  # one line in the engine's log, once
                total = sum(len(b.specs) for b in self.plan)
                print(f"[rlpost] weight sync: {self.num_direct} of {total} tensors are copied straight into the "
                      f"engine's parameters, {total - self.num_direct} go through its load_weights", flush=True)
            return
        if direct:
            torch._foreach_copy_([dst for _, dst in direct], [named[k][1] for k, _ in direct])
        if len(direct) < len(named):
            done = {k for k, _ in direct}
            loader([item for k, item in enumerate(named) if k not in done])
