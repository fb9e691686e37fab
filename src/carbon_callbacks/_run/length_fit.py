"""A step's FLOPs as the exact polynomial in sequence length they follow, so many lengths cost a few counts.

For a fixed batch size, a transformer step's matmul FLOPs are `a + b L + c L^2` in the sequence length `L` (linear
layers grow with `L`, attention scores and values with `L^2`). With dynamic padding most batches bring a new `L`,
and counting each one re-runs a whole step. Instead, `FIT_LENGTHS` lengths are counted directly and give the
polynomial exactly (rational arithmetic); the next `CHECK_LENGTHS` new lengths are counted directly too and must
equal its prediction to the FLOP. Only then are further lengths predicted. A model whose FLOPs do not follow it
(capacity rounding in MoE layers, sliding windows that some lengths exceed) fails a check and is counted directly
at every new shape from then on. See `docs/flops.md`.
"""

from __future__ import annotations

from collections.abc import Hashable
from fractions import Fraction

#: Lengths counted directly to fit `a + b L + c L^2` (three points give a quadratic exactly).
FIT_LENGTHS = 3
#: Further lengths counted directly that must match the fit before it is trusted.
CHECK_LENGTHS = 2


def length_family(key: Hashable, length: int) -> Hashable:
    """`key` with every dimension equal to `length` replaced by `"L"`: batches that differ only in length share it.

    Other dimensions (the batch size among them) stay literal, so each batch size gets a polynomial of its own.
    """
    if isinstance(key, tuple):
        return tuple(length_family(item, length) for item in key)
    if type(key) is int and key == length:
        return "L"
    return key


class LengthFit:
    """FLOPs of one batch family at any sequence length, from a few direct counts (see the module doc)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.coefficients: tuple[Fraction, Fraction, Fraction] | None = None
        self.trusted = False
        self.failed = False
        self.method: str | None = None  # how the direct counts were made

    def predict(self, length: int) -> int | None:
        """The FLOPs at `length` once the fit is trusted, else `None` (count directly and `add` the result)."""
        if not self.trusted:
            return None
        a, b, c = self.coefficients
        return int(a + b * length + c * length * length)

    def add(self, length: int, flops: int) -> None:
        """Records a direct count: it fits the polynomial, or checks it, or (when it disagrees) ends its use."""
        if self.failed or self.trusted or length in self.counts:
            return
        if self.coefficients is not None:
            a, b, c = self.coefficients
            if a + b * length + c * length * length != flops:
                self.failed = True
                return
        self.counts[length] = int(flops)
        if len(self.counts) == FIT_LENGTHS:
            self.coefficients = _quadratic(self.counts)
        self.trusted = len(self.counts) == FIT_LENGTHS + CHECK_LENGTHS

    def describe(self) -> str:
        """How predicted counts were obtained, for `run.json`'s `flops_method`."""
        lengths = list(self.counts)  # in the order they were counted: the fit's, then the checks'
        return (f"{self.method}; other lengths from a + b L + c L^2 fitted to the counts at L={lengths[:FIT_LENGTHS]}"
                f" and equal to the counts at L={lengths[FIT_LENGTHS:]}")


class SequenceFit:
    """The model FLOPs of one sequence as `c0 + c1 n + c2 n^2 + c3 m` in its real tokens `n` and, where its batch
    carries labels, the tokens `m` whose label the loss reads (a fused LM head computes logits for those alone):
    fitted exactly to counts of one sequence at a few `(n, m)`, then checked on further ones.

    Args:
        labelled: whether the sequences carry labels (else `m` is not a variable: `c3 = 0`).
    """

    def __init__(self, labelled: bool) -> None:
        self.labelled = labelled
        self.unknowns = 4 if labelled else 3
        self.points: list[tuple[int, int, int]] = []
        self.coefficients: tuple[Fraction, ...] | None = None
        self.trusted = False
        self.failed = False

    def add(self, n: int, m: int, flops: int) -> None:
        """Records one sequence's count: it fits the polynomial, or checks it, or (when it disagrees) ends its use."""
        if self.failed or self.trusted:
            return
        if self.coefficients is not None:
            if self._value(n, m) != flops:
                self.failed = True
                return
            self.points.append((n, m, int(flops)))
            self.trusted = len(self.points) == self.unknowns + CHECK_LENGTHS
            return
        self.points.append((n, m, int(flops)))
        if len(self.points) == self.unknowns:
            self.coefficients = _solve([self._features(n, m) for n, m, _ in self.points],
                                       [y for _, _, y in self.points])
            self.failed = self.coefficients is None

    def per_sequence(self) -> tuple[float, float, float, float] | None:
        """`(c0, c1, c2, c3)` once trusted, else `None`."""
        if not self.trusted:
            return None
        c = [float(v) for v in self.coefficients]
        return (c[0], c[1], c[2], c[3] if self.labelled else 0.0)

    def _features(self, n: int, m: int) -> list[int]:
        return [1, n, n * n, m][:self.unknowns]

    def _value(self, n: int, m: int) -> Fraction:
        return sum(c * x for c, x in zip(self.coefficients, self._features(n, m)))


def _solve(rows: list[list[int]], values: list[int]) -> tuple[Fraction, ...] | None:
    """The exact solution of a square linear system (Gaussian elimination in rationals); `None` if singular."""
    size = len(rows)
    matrix = [[Fraction(x) for x in row] + [Fraction(y)] for row, y in zip(rows, values)]
    for col in range(size):
        pivot = next((r for r in range(col, size) if matrix[r][col] != 0), None)
        if pivot is None:
            return None
        matrix[col], matrix[pivot] = matrix[pivot], matrix[col]
        for r in range(size):
            if r != col and matrix[r][col] != 0:
                factor = matrix[r][col] / matrix[col][col]
                matrix[r] = [a - factor * b for a, b in zip(matrix[r], matrix[col])]
    return tuple(matrix[i][size] / matrix[i][i] for i in range(size))


def _quadratic(points: dict[int, int]) -> tuple[Fraction, Fraction, Fraction]:
    """The exact (a, b, c) of `a + b x + c x^2` through three points (Lagrange, in rationals)."""
    (x0, y0), (x1, y1), (x2, y2) = points.items()
    a = b = c = Fraction(0)
    for xi, yi, xj, xk in ((x0, y0, x1, x2), (x1, y1, x0, x2), (x2, y2, x0, x1)):
        w = Fraction(yi, (xi - xj) * (xi - xk))  # yi * (x - xj)(x - xk) / ((xi - xj)(xi - xk))
        a += w * xj * xk
        b -= w * (xj + xk)
        c += w
    return a, b, c
