"""Sensitivities in sequential mode: each site's effect on the model's output, block by block.

One-shot calibration (:func:`tfx.passes._calibrate.measure_sensitivity`) adds noise to one
site's output at a time and runs the whole model: one forward of the model per site, which a
large model cannot afford (a 1B decoder has over a hundred sites). Sequential mode measures
the same quantity, to first order, with one backward pass of the probe batch (the first
calibration batch) through the model, one block in memory at a time:

    s_i = |J_i^T v|^2 |y_i|^2 / (n_i |f|^2)

where ``f`` is the model's floating output, ``y_i`` site ``i``'s output (``n_i`` entries at
the batch's real positions), ``J_i`` the Jacobian of ``f`` with respect to ``y_i`` and ``v``
a standard normal vector over ``f``. Since ``E |J_i^T v|^2 = |J_i|_F^2``, ``s_i`` estimates
``E |J_i e|^2 / (|f|^2 scale^2)`` for isotropic noise ``e`` of relative size ``scale`` at the
site: the factor by which an error there is amplified by the rest of the network, as the
one-shot measure defines it. ``J_i^T v`` is the gradient of ``<f, v>`` with respect to
``y_i``: the backward pass gives every site's at once.

The pass: the layers after the blocks (the head) run with gradients on the stored output of
the last block, giving ``f``, ``v`` and the cotangent of the last block's output; then each
block, from the last to the first, is run again on its stored input of the probe batch and
differentiated (its sites' gradients, and the cotangent of its input for the block before);
then the layers before the blocks (embeddings). Embeddings with a projection basis
(:func:`~tfx.passes._calibrate.embedding_basis`) are measured as in one shot, with the error
their factorization makes: their lookups projected onto the basis and the result run forward
through every block.

Cost: about three model forwards of the probe batch, plus one forward per projected embedding,
whatever the number of sites, and at most one more forward of the blocks; memory: one
block's activations of the probe batch, and the probe batch's hidden state at every
``ceil(sqrt(blocks))``-th block's input (kept during the spectra pass, where ``offload=``
says; the backward pass recomputes the inputs in between).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ._errors import OptionError
from .passes._calibrate import PROBE_FLOOR, Perturb, positions_mask

if TYPE_CHECKING:
    from ._sequential import BlockStream, _Parts, _Store
    from .passes import Site

__all__ = ["block_sensitivities"]

#: Seed of the probe vector ``v`` (one draw: the estimate of a site's sensitivity
#: concentrates over its output's entries).
SEED = 1234


#: Rows of a tensor squared and summed in float64 at a time (no float64 copy of a whole
#: activation: an LM head's logits are ``tokens x vocabulary``).
_CHUNK = 1 << 20


def _norm2(t: torch.Tensor, mask: torch.Tensor | None) -> float:
    """``|t|^2`` in float64 over the positions ``mask`` keeps (all of ``t`` without one)."""
    t = t.detach()
    if mask is not None and tuple(t.shape[: mask.dim()]) == tuple(mask.shape) and t.dim() > 1:
        rows = t.reshape(mask.numel(), -1)[mask.reshape(-1).to(t.device)]
    else:
        rows = t.reshape(1, -1) if t.dim() < 2 else t.reshape(t.shape[0], -1)
    step = max(1, _CHUNK // max(rows.shape[1], 1))
    return float(sum(part.double().square().sum() for part in rows.split(step)))


@dataclasses.dataclass
class _Call:
    """One call of a watched site.

    Its output's ``|y|^2`` and ``n`` at the real positions, the zero leaf added to it (when
    its output needs one) and its gradient's ``|g|^2``.
    """

    site: int
    y2: float
    n: int
    leaf: torch.Tensor | None = None
    g2: float = 0.0


class _Watch:
    """The gradient of each watched site's output while the model runs backward.

    An output that requires a gradient (it depends on the differentiated input: the
    parameters are frozen meanwhile) gets a tensor hook that sums ``|g|^2`` as the gradient
    passes; one that does not (a lookup) gets a zero leaf added, whose gradient is asked for.
    """

    def __init__(self, mask: torch.Tensor | None) -> None:
        self.mask = mask
        self.calls: list[_Call] = []

    def hook(self, i: int) -> Callable[[nn.Module, Any, Any], Any]:
        def watch(_module: nn.Module, _args: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or not out.numel():
                return None
            keep = positions_mask(self.mask, out)
            n = int(keep.sum()) * (out.numel() // keep.numel()) if keep is not None else out.numel()
            call = _Call(i, _norm2(out, self.mask), n)
            self.calls.append(call)
            if out.requires_grad:

                def seen(g: torch.Tensor) -> None:
                    call.g2 += _norm2(g, self.mask)

                out.register_hook(seen)
                return None
            call.leaf = torch.zeros_like(out, requires_grad=True)
            return out + call.leaf

        return watch

    @contextlib.contextmanager
    def on(self, model: nn.Module, sites: Sequence[Site], indices: Sequence[int]) -> Iterator[None]:
        self.calls.clear()
        handles = [
            model.get_submodule(sites[i].name).register_forward_hook(self.hook(i)) for i in indices
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def leaves(self) -> list[torch.Tensor]:
        return [c.leaf for c in self.calls if c.leaf is not None]

    def add_to(
        self, values: dict[int, float], grads: Sequence[torch.Tensor | None], scale: float
    ) -> None:
        """Add each call's ``|g|^2 |y|^2 / n * scale`` to its site's value.

        ``grads``: the gradients of :meth:`leaves`, in order.
        """
        leaf_grads = iter(grads)
        for call in self.calls:
            if call.leaf is not None:
                g = next(leaf_grads)
                call.g2 += 0.0 if g is None else _norm2(g, self.mask)
            values[call.site] += call.g2 * call.y2 / call.n * scale if call.n else 0.0
        self.calls.clear()


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters without gradients for the duration (restored after).

    Only the paths from the differentiated inputs are recorded, and no weight gradient is
    computed.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _grad(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
) -> list[torch.Tensor | None]:
    """``d <outputs, cotangents> / d inputs`` (None where an input does not reach them)."""
    pairs = [(o, c) for o, c in zip(outputs, cotangents, strict=True) if o.requires_grad]
    if not pairs or not inputs:
        return [None] * len(inputs)
    return list(
        torch.autograd.grad(
            [o for o, _ in pairs],
            list(inputs),
            grad_outputs=[c.to(o.device, o.dtype) for o, c in pairs],
            allow_unused=True,
        )
    )


def checkpoint_every(n_blocks: int) -> int:
    """Every how many blocks the probe batch's input is kept: ``ceil(sqrt(n_blocks))``.

    The backward pass recomputes the inputs between two kept ones (at most one forward of the
    blocks in all): about ``2 sqrt(n_blocks)`` of the batch's hidden states in memory at once,
    not ``n_blocks``.
    """
    return max(1, math.isqrt(n_blocks - 1) + 1) if n_blocks > 1 else 1


def _first_input(stream: BlockStream, batch: int) -> torch.Tensor | None:
    """The first block's hidden-state input on ``batch`` (the model called up to that block)."""
    from ._sequential import _Stop

    found: list[torch.Tensor] = []

    def catch(_module: nn.Module, args: Any, kwargs: Any) -> None:
        found.append(stream._split(args, kwargs)[0])
        raise _Stop

    handle = stream.blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with contextlib.suppress(_Stop):
            stream._call(batch)
    finally:
        handle.remove()
    return found[0] if found else None


def _floating(out: Any) -> list[torch.Tensor]:
    flat, _ = tree_flatten(out)
    return [t for t in flat if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]


def block_sensitivities(
    stream: BlockStream,
    sites: Sequence[Site],
    parts: _Parts,
    probes: _Store,
    bases: dict[str, torch.Tensor],
    on_device: Callable[[int], contextlib.AbstractContextManager[None]],
    progress: Any = None,
) -> dict[str, float]:
    """Each factorizable site's sensitivity (see the module docstring), by name.

    ``probes`` holds the probe batch's hidden state at the input of every
    :func:`checkpoint_every`-th block (key ``k``) and the last block's output (key
    ``len(blocks)``), all of the dense model; ``bases`` the projection bases of embeddings
    before the blocks; ``on_device(k)`` puts block ``k`` where it runs. The probe batch is the
    stream's first local batch.
    """
    with _frozen(stream.model):
        values, total, reference = _backward(
            stream, sites, parts, probes, on_device, progress, keep_outputs=bool(bases)
        )
    # Embeddings with a basis: the error their factorization makes, run through every block.
    for name, basis in bases.items():
        i = next(j for j in parts.prefix if sites[j].name == name)
        change, error = _projected_change(stream, sites[i], basis, reference, on_device)
        if error > PROBE_FLOOR:
            values[i] = change / total / error
    return {s.name: values[i] for i, s in enumerate(sites) if s.info.factorizable}


def _backward(
    stream: BlockStream,
    sites: Sequence[Site],
    parts: _Parts,
    probes: _Store,
    on_device: Callable[[int], contextlib.AbstractContextManager[None]],
    progress: Any,
    *,
    keep_outputs: bool,
) -> tuple[dict[int, float], float, list[torch.Tensor]]:
    """The backward pass: every site's value by index, ``|f|^2`` and (``keep_outputs``) ``f``."""
    batch = stream.local[0]
    mask = stream.masks[batch]
    n_blocks = len(stream.blocks)
    values: dict[int, float] = collections.defaultdict(float)
    watch = _Watch(mask)

    # The layers after the blocks: the output, the probe vector, the last block's cotangent.
    hidden = probes.get(n_blocks).detach().requires_grad_()
    with watch.on(stream.model, sites, parts.suffix), torch.enable_grad():
        with stream.stubs("finish", last=hidden):
            outputs = _floating(stream._call(batch))
        total = sum(_norm2(t, mask) for t in outputs)
        if total == 0.0:
            raise OptionError(
                "the sensitivity of a layer is how much its error changes the model's floating "
                "outputs, and this model's outputs on the first calibration batch have none (or "
                "are all zero), so every layer would look free to compress.\nFix: make the model "
                "return its logits or features (not e.g. argmax indices), or use "
                "strategy='greedy'."
            )
        probe = []
        for j, t in enumerate(outputs):
            gen = torch.Generator(device=t.device).manual_seed(SEED + j)
            v = torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype)
            keep = positions_mask(mask, t)
            probe.append(v.mul_(keep) if keep is not None else v)
        grads = _grad(outputs, [hidden, *watch.leaves()], probe)
    # what the projected embeddings are compared with (the outputs' own storage, no copy)
    reference = [t.detach() for t in outputs] if keep_outputs else []
    del outputs, probe
    watch.add_to(values, grads[1:], 1.0 / total)
    cotangent = grads[0] if grads[0] is not None else torch.zeros_like(hidden)
    del grads, hidden

    # The blocks, last to first; each segment's inputs recomputed from its checkpoint.
    every = checkpoint_every(n_blocks)
    inputs: dict[int, torch.Tensor] = {}
    for k in reversed(range(n_blocks)):
        if k not in inputs:
            start = k - k % every
            inputs[start] = probes.get(start)
            with torch.no_grad():
                for j in range(start, k):
                    with on_device(j):
                        inputs[j + 1] = stream.run_block(j, batch, hidden=inputs[j])
        with on_device(k):
            x = inputs.pop(k).detach().requires_grad_()
            with watch.on(stream.model, sites, parts.blocks[k]), torch.enable_grad():
                out = stream.run_block(k, batch, hidden=x)
                grads = _grad([out], [x, *watch.leaves()], [cotangent])
            del out
        watch.add_to(values, grads[1:], 1.0 / total)
        cotangent = grads[0] if grads[0] is not None else torch.zeros_like(x)
        del grads, x
        if progress is not None:
            progress.update(1)

    # The layers before the blocks: the first block's input is where their paths end.
    with watch.on(stream.model, sites, parts.prefix), torch.enable_grad():
        first = _first_input(stream, batch)
        grads = _grad([first] if first is not None else [], watch.leaves(), [cotangent])
    watch.add_to(values, grads, 1.0 / total)
    return values, total, reference


@torch.no_grad()
def _projected_change(
    stream: BlockStream,
    site: Site,
    basis: torch.Tensor,
    reference: Sequence[torch.Tensor],
    on_device: Callable[[int], contextlib.AbstractContextManager[None]],
) -> tuple[float, float]:
    """``|f' - f|^2`` with ``site``'s output projected onto ``basis``; the projection's error."""
    batch = stream.local[0]
    mask = stream.masks[batch]
    project = Perturb(mask, basis)
    project.scale = 1.0
    module = stream.model.get_submodule(site.name)
    handle = module.register_forward_hook(lambda _m, _a, out: project(out))
    try:
        hidden = _first_input(stream, batch)
    finally:
        handle.remove()
    if hidden is None:
        return 0.0, 0.0
    for k in range(len(stream.blocks)):
        with on_device(k):
            hidden = stream.run_block(k, batch, hidden=hidden)
    with stream.stubs("finish", last=hidden):
        outputs = _floating(stream._call(batch))
    change = 0.0
    for t, r in zip(outputs, reference, strict=True):
        change += _norm2(t.sub_(r), mask)  # in place: the output is not needed after
    return change, project.error
