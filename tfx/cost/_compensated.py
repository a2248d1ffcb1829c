"""A float64 running sum whose result does not depend on the order of its terms.

A plain float64 sum rounds after every addition, so the same terms added in another order
(or in shards that are added up at the end, as ranks of ``torch.distributed`` do) can give
a different last bit. :class:`CompensatedSum` keeps the sum as an unevaluated pair
``hi + lo`` and adds each term with Knuth's TwoSum, which returns the rounded sum *and* its
exact rounding error; the errors collect in ``lo``. While the pair holds the exact sum (see
below), its rounded value ``fl(hi + lo)`` is the correctly rounded exact sum: the same bits
whatever the order, the grouping, or the number of shards.

When exact: every step is exact while ``lo`` has room for the sum's bits, i.e. while the
largest partial sum times the number of terms is within ``2**104`` of the finest bit of
any term. Terms computed in float32 (the GEMMs of a float32 model: 24-bit significands)
may span a ratio of ``2**62`` (4.6e18) in magnitude over a million additions; float64
terms ``2**43`` (8.8e12) over a thousand. Beyond that the pair is still accurate to about
``2**-100`` relative, and its rounded value differs between orders only where the exact sum
lies within that distance of a rounding tie.

Cost: nine elementwise passes per term, in place over cache-sized chunks on the CPU (no
allocation of the sum's size). ``InputStats.update`` (the GEMM, then this) measured 17, 50
and 272 ms on one thread for 512 x 768, 2048 x 768 and 512 x 3072 rows, against 21, 50 and
375 ms with the plain ``moment + part.double()`` it replaced, whose fresh allocations cost
more than the passes; the GEMM alone took 12, 49 and 223 ms.
"""

from __future__ import annotations

import torch

__all__ = ["CompensatedSum"]

# Elements per in-place pass on the CPU: three float64 scratch chunks of 512 KiB stay in L2.
_CHUNK = 1 << 16


class CompensatedSum:
    """A float64 sum of tensors of one shape, kept as a pair ``hi + lo`` (TwoSum).

    Args:
        shape: the shape of every term.
        device: where the sum lives (the terms' device).

    Example:
        >>> total = CompensatedSum((1,))
        >>> for term in (1e16, 1.0, -1e16, 1.0):
        ...     total.add(torch.tensor([term], dtype=torch.float64))
        >>> total.value().item()  # a plain float64 sum in this order gives 1.0
        2.0
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device | str | None = None) -> None:
        # -0.0 is the additive identity of IEEE arithmetic (+0.0 would turn a sum of -0.0
        # terms into +0.0): an empty sum, or an empty shard, changes no bit.
        self.hi = torch.full(shape, -0.0, dtype=torch.float64, device=device)
        self.lo = torch.full(shape, -0.0, dtype=torch.float64, device=device)

    def add(self, term: torch.Tensor, *, offset: int | None = None) -> None:
        """Add ``term`` (any float dtype: converted to float64 exactly).

        ``offset``: add ``term`` (any shape) to the flattened sum's elements from ``offset``
        on; the others are unchanged. Element by element, the same bits as adding a whole
        term that holds ``term`` there (and ``-0.0`` elsewhere).
        """
        if offset is None and tuple(term.shape) != tuple(self.hi.shape):
            raise ValueError(
                f"a term of shape {tuple(term.shape)} cannot be added to a sum of shape "
                f"{tuple(self.hi.shape)}"
            )
        hi, lo = self.hi.view(-1), self.lo.view(-1)
        if offset is not None:
            if not 0 <= offset <= hi.numel() - term.numel():
                raise ValueError(
                    f"{term.numel()} elements from offset {offset} do not fit a sum of "
                    f"{hi.numel()}"
                )
            hi, lo = hi[offset : offset + term.numel()], lo[offset : offset + term.numel()]
        flat = term.detach().reshape(-1).to(self.hi.device)
        step = _CHUNK if hi.device.type == "cpu" else max(hi.numel(), 1)
        x = torch.empty(min(step, hi.numel()), dtype=torch.float64, device=hi.device)
        s, b = torch.empty_like(x), torch.empty_like(x)
        for start in range(0, hi.numel(), step):
            stop = min(start + step, hi.numel())
            n = stop - start
            _two_sum(hi[start:stop], lo[start:stop], flat[start:stop], x[:n], s[:n], b[:n])

    def merge(self, hi: torch.Tensor, lo: torch.Tensor) -> None:
        """Add another pair's exact sum (e.g. another rank's): ``hi`` then ``lo``."""
        self.add(hi)
        self.add(lo)

    def value(self) -> torch.Tensor:
        """The sum rounded to float64: ``fl(hi + lo)``, a new tensor."""
        return self.hi + self.lo

    def collapse(self) -> torch.Tensor:
        """:meth:`value` computed in ``hi``'s memory (no third tensor); the sum is spent after.

        The same bits as :meth:`value`. ``hi`` and ``lo`` are released: a later
        :meth:`add` raises.
        """
        out = self.hi.add_(self.lo)
        del self.hi, self.lo
        return out


def _two_sum(
    hi: torch.Tensor,
    lo: torch.Tensor,
    term: torch.Tensor,
    x: torch.Tensor,
    s: torch.Tensor,
    b: torch.Tensor,
) -> None:
    """``hi <- fl(hi + term)``, ``lo <- lo + err`` in place (``x, s, b``: scratch)."""
    # Knuth's TwoSum: s = a + x; b = s - a; err = (a - (s - b)) + (x - b), exactly.
    x.copy_(term)
    torch.add(hi, x, out=s)
    torch.sub(s, hi, out=b)
    x.sub_(b)  # x - b
    torch.sub(s, b, out=b)  # s - b
    torch.sub(hi, b, out=b)  # a - (s - b)
    b.add_(x)  # err: the two parts add exactly
    lo.add_(b)
    hi.copy_(s)
