"""torch's CPU random streams reproduced bit for bit with numpy, for adapters whose HF peft weights come from a
seeded ``torch.Generator`` (VeRA's projections, FourierFT's frequency locations).

``torch.Generator().manual_seed(seed)`` on CPU is the standard MT19937 engine seeded with the low 32 bits of
``seed``: numpy's legacy ``RandomState(seed)`` draws the same 32-bit words. On top of that word stream:

* ``uniform_(low, high)`` on float32 keeps the low 24 bits ``k`` of each word and returns
  ``k * 2**-24 * (high - low) + low``. torch's AVX2 kernel fuses the multiply-add (one rounding); the exact value is
  computed here in float64 (it fits: at most 48 significant bits) and rounded once to float32, which equals it.
* ``randperm(n)`` for ``n < 2**32 // 20`` is a forward Fisher-Yates shuffle: step ``i`` swaps position ``i`` with
  ``i + word % (n - i)``. Positions before ``i`` never change again, so the first ``k`` entries need only ``k``
  steps; larger ``n`` use another algorithm (64-bit draws over the whole array) that is not reproduced here.

Tested against torch 2.13 (tests/test_vera.py, tests/test_fourierft.py).
"""
import numpy as np

from ..config import describe, is_integer

# torch.randperm switches to another shuffle (64-bit draws, inside-out) from this size on.
RANDPERM_LIMIT = (2**32 - 1) // 20


class TorchCPUGenerator:
    """The stream of ``torch.Generator(device="cpu").manual_seed(seed)``; each call continues it."""

    def __init__(self, seed):
        if not is_integer(seed):
            raise ValueError(f"The random seed must be an integer, got {describe(seed)}")
        self._engine = np.random.RandomState(seed & 0xFFFFFFFF)

    def words(self, count):
        """The next ``count`` 32-bit words of the engine (``CPUGeneratorImpl::random``)."""
        return self._engine.randint(0, 2**32, size=count, dtype=np.uint32)

    def uniform(self, shape, low, high):
        """``torch.empty(shape).uniform_(low, high, generator=...)`` (float32, filled in row-major order)."""
        low, high = float(np.float32(low)), float(np.float32(high))
        fraction = (self.words(int(np.prod(shape))) & np.uint32(0xFFFFFF)).astype(np.float64) * 2.0**-24
        return (fraction * (high - low) + low).astype(np.float32).reshape(shape)

    def randperm_head(self, n, count):
        """The first ``count`` entries of ``torch.randperm(n, generator=...)`` (int64)."""
        if n >= RANDPERM_LIMIT:
            raise ValueError(f"torch.randperm({n}) shuffles with another algorithm from {RANDPERM_LIMIT} entries "
                             "on, which mindpeft does not reproduce")
        count = min(count, n)
        words = self.words(min(count, n - 1))
        moved = {}  # position -> value, for the positions a swap has touched
        head = np.empty(count, np.int64)
        for i in range(count):
            j = i + int(words[i]) % (n - i) if i < n - 1 else i
            head[i] = moved.get(j, j)
            moved[j] = moved.get(i, i)
        return head
