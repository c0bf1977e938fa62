"""bf16 training with fp32 master weights: the forward and backward run on a bf16 copy of the model.

Autocast keeps the weights, the residual stream and the LayerNorm outputs in fp32; here everything the model
touches is bf16 (about half the activation bytes), while the optimizer, EMA, evaluation and checkpoints keep
working on the fp32 master model, as Megatron-LM's and DeepSpeed's bf16 modes do.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Bf16Copy:
    """A bf16 working copy of an fp32 `master` model; its gradients are handed to the master before a step."""

    def __init__(self, master: nn.Module):
        self.master = master
        self.work = copy.deepcopy(master).to(torch.bfloat16)
        self._master_params = list(master.parameters())
        self._work_params = list(self.work.parameters())

    def grads_to_master(self) -> None:
        """Move the working copy's gradients (bf16) to the master's (fp32); the working copy's are cleared."""
        pairs = [(m, w) for m, w in zip(self._master_params, self._work_params) if w.grad is not None]
        for m, _ in pairs:
            if m.grad is None:
                m.grad = torch.empty_like(m)
        torch._foreach_copy_([m.grad for m, _ in pairs], [w.grad for _, w in pairs])  # casts to fp32
        for w in self._work_params:
            w.grad = None

    @torch.no_grad()
    def pull(self) -> None:
        """Copy the master's weights (after an optimizer step or a load) into the working copy."""
        torch._foreach_copy_(self._work_params, [p.detach() for p in self._master_params])
        for w, m in zip(self.work.buffers(), self.master.buffers()):
            w.copy_(m)
