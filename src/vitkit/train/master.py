"""bf16 training with fp32 master weights: the forward and backward run on a bf16 copy of the model.

Autocast keeps the weights, the residual stream and the LayerNorm outputs in fp32; here everything the model
touches is bf16 (about half the activation bytes) but BatchNorm, while gradients are summed in fp32 on the master
model, which the optimizer steps and EMA, evaluation and checkpoints read (as the fp32 main parameters and
gradients of Megatron-LM's bf16 mode).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class Bf16Copy:
    """A bf16 working copy of an fp32 `master` model; each backward's gradients are added to the master's."""

    def __init__(self, master: nn.Module):
        self.master = master
        self.work = copy.deepcopy(master).to(torch.bfloat16)
        # BatchNorm stays fp32 (as apex's keep_batchnorm_fp32), and its running statistics are the master's own
        # tensors: the working copy's forward updates what evaluation and checkpoints read
        for w, m in zip(self.work.modules(), master.modules()):
            if isinstance(w, nn.modules.batchnorm._BatchNorm):
                w.float()
                for name in list(w._buffers):
                    w._buffers[name] = m._buffers[name]
        self._master_params = list(master.parameters())
        self._work_params = list(self.work.parameters())
        self.pull()  # the fp32 BatchNorm weights exactly the master's (not their bf16 rounding)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input in the working copy's dtype."""
        return x.to(torch.bfloat16)

    @torch.no_grad()
    def accumulate_grads(self) -> None:
        """Add the working copy's bf16 gradients to the master's fp32 ones (summed over micro-batches); clear them."""
        pairs = [(m, w) for m, w in zip(self._master_params, self._work_params) if w.grad is not None]
        fresh = [(m, w) for m, w in pairs if m.grad is None]
        summed = [(m, w) for m, w in pairs if m.grad is not None]
        # the first micro-batch: one multi-tensor cast-copy (a few CUDA launches, not one per tensor)
        if fresh:
            grads = [torch.empty_like(m) for m, _ in fresh]
            torch._foreach_copy_(grads, [w.grad for _, w in fresh])
            for (m, _), g in zip(fresh, grads):
                m.grad = g
        if summed:  # later micro-batches (mixed dtypes: torch adds these tensor by tensor)
            torch._foreach_add_([m.grad for m, _ in summed], [w.grad for _, w in summed])
        for _, w in pairs:
            w.grad = None

    @torch.no_grad()
    def pull(self, buffers: bool = False) -> None:
        """Copy the master's weights into the working copy: after each optimizer step, and after a load."""
        torch._foreach_copy_(self._work_params, [p.detach() for p in self._master_params])
        if buffers:  # constant ones, copied when weights are loaded (BatchNorm's are shared, not copied)
            for w, m in zip(self.work.buffers(), self.master.buffers()):
                if w is not m:
                    w.copy_(m)
