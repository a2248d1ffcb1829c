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
whatever the number of sites; memory: one block's activations of the probe batch, and the
probe batch's hidden state at each block's input (kept during the spectra pass, where
``offload=`` says).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ._errors import OptionError
from .passes._calibrate import _PROBE_FLOOR, _Perturb, _positions_mask

if TYPE_CHECKING:
    from ._sequential import BlockStream, _Parts, _Store
    from .passes import Site

__all__ = ["block_sensitivities"]

#: Seed of the probe vector ``v`` (one draw: the estimate of a site's sensitivity
#: concentrates over its output's entries).
SEED = 1234


def _norm2(t: torch.Tensor, keep: torch.Tensor | None) -> float:
    t = t.detach()
    if keep is not None:
        t = t * keep
    return float(torch.linalg.vector_norm(t, dtype=torch.float64) ** 2)


class _Leaves:
    """Adds a zero leaf to each watched site's output while the model runs.

    The gradient with respect to a leaf is the gradient with respect to that output (one per
    call of the site), and the path through the output stays as it was.
    """

    def __init__(self, mask: torch.Tensor | None) -> None:
        self.mask = mask
        #: per call: site index, leaf, |y|^2 and n at the real positions, the mask over y
        self.calls: list[tuple[int, torch.Tensor, float, int, torch.Tensor | None]] = []

    def hook(self, i: int) -> Callable[[nn.Module, Any, Any], Any]:
        def add(_module: nn.Module, _args: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or not out.numel():
                return None
            keep = _positions_mask(self.mask, out)
            if keep is not None:
                n = int(keep.sum()) * (out.numel() // keep.numel())
            else:
                n = out.numel()
            leaf = torch.zeros_like(out, requires_grad=True)
            self.calls.append((i, leaf, _norm2(out, keep), n, keep))
            return out + leaf

        return add

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

    def add_to(
        self, values: dict[int, float], grads: Sequence[torch.Tensor | None], scale: float
    ) -> None:
        """Add each call's ``|g|^2 |y|^2 / n * scale`` to its site's value."""
        for (i, _leaf, y2, n, keep), g in zip(self.calls, grads, strict=True):
            values[i] += 0.0 if g is None or not n else _norm2(g, keep) * y2 / n * scale

    def leaves(self) -> list[torch.Tensor]:
        return [leaf for _, leaf, *_ in self.calls]


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

    ``probes`` holds the probe batch's hidden state at each block's input (key ``k``) and the
    last block's output (key ``len(blocks)``), all of the dense model; ``bases`` the
    projection bases of embeddings before the blocks; ``on_device(k)`` puts block ``k`` where
    it runs. The probe batch is the stream's first local batch.
    """
    batch = stream.local[0]
    mask = stream.masks[batch]
    n_blocks = len(stream.blocks)
    values: dict[int, float] = collections.defaultdict(float)
    leaves = _Leaves(mask)

    # The layers after the blocks: the output, the probe vector, the last block's cotangent.
    hidden = probes.get(n_blocks).detach().requires_grad_()
    with leaves.on(stream.model, sites, parts.suffix), torch.enable_grad():
        with stream.stubs("finish", last=hidden):
            outputs = _floating(stream._call(batch))
        keeps = [_positions_mask(mask, t) for t in outputs]
        reference = [
            t.detach().double() * (k.double() if k is not None else 1.0)
            for t, k in zip(outputs, keeps, strict=True)
        ]
        total = sum(float(r.square().sum()) for r in reference)
        if total == 0.0:
            raise OptionError(
                "the sensitivity of a layer is how much its error changes the model's floating "
                "outputs, and this model's outputs on the first calibration batch have none (or "
                "are all zero), so every layer would look free to compress.\nFix: make the model "
                "return its logits or features (not e.g. argmax indices), or use "
                "strategy='greedy'."
            )
        probe = []
        for t, k in zip(outputs, keeps, strict=True):
            gen = torch.Generator(device=t.device).manual_seed(SEED + len(probe))
            v = torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype)
            probe.append(v * k if k is not None else v)
        grads = _grad(outputs, [hidden, *leaves.leaves()], probe)
    del outputs, probe
    leaves.add_to(values, grads[1:], 1.0 / total)
    cotangent = grads[0] if grads[0] is not None else torch.zeros_like(hidden)
    del grads, hidden

    # The blocks, last to first.
    for k in reversed(range(n_blocks)):
        with on_device(k):
            x = probes.get(k).detach().requires_grad_()
            with leaves.on(stream.model, sites, parts.blocks[k]), torch.enable_grad():
                out = stream.run_block(k, batch, hidden=x)
                grads = _grad([out], [x, *leaves.leaves()], [cotangent])
            del out
        leaves.add_to(values, grads[1:], 1.0 / total)
        cotangent = grads[0] if grads[0] is not None else torch.zeros_like(x)
        del grads, x
        if progress is not None:
            progress.update(1)

    # The layers before the blocks: the first block's input is where their paths end.
    with leaves.on(stream.model, sites, parts.prefix), torch.enable_grad():
        first = _first_input(stream, batch)
        grads = _grad([first] if first is not None else [], leaves.leaves(), [cotangent])
    leaves.add_to(values, grads, 1.0 / total)
    del cotangent, first, grads

    # Embeddings with a basis: the error their factorization makes, run through every block.
    for name, basis in bases.items():
        i = next(j for j in parts.prefix if sites[j].name == name)
        change, error = _projected_change(stream, sites[i], basis, reference, on_device)
        if error > _PROBE_FLOOR:
            values[i] = change / total / error
    return {s.name: values[i] for i, s in enumerate(sites) if s.info.factorizable}


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
    project = _Perturb(mask, basis)
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
        keep = _positions_mask(mask, t)
        got = t.double() * (keep.double() if keep is not None else 1.0)
        change += float((got - r).square().sum())
    return change, project.error
