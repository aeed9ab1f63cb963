"""All random draws of mixkit go through this module.

Every function takes ``generator: torch.Generator | None``. With ``None`` the draws come from
torch's global CPU generator, so ``torch.manual_seed`` makes a run reproducible; with a
generator, the same seed gives the same draws. Draws are made on the CPU and moved to the
input's device once by the caller, so CPU and GPU runs agree.

``torch.distributions`` takes no generator, so Beta and Dirichlet draws use a NumPy
``Generator`` (a local one, never the global state) seeded from a 63-bit integer drawn from
the torch generator.
"""

from __future__ import annotations

import numpy as np
import torch

from mixkit.errors import HyperParameterError

__all__ = [
    "check_generator",
    "uniform",
    "randint",
    "bernoulli",
    "randperm",
    "normal",
    "beta",
    "dirichlet",
    "numpy_generator",
    "poisson",
]


_CHECKED: list[torch.Generator] = []  # the last generator that passed (a generator's device is fixed)


def check_generator(generator: torch.Generator | None) -> None:
    """Raise if ``generator`` is neither ``None`` nor a CPU ``torch.Generator``."""
    if generator is None or (_CHECKED and generator is _CHECKED[0]):
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise HyperParameterError(
            "generator must live on the CPU (mixkit samples on the CPU and moves the results "
            f"to the input's device once); got a generator on {generator.device}"
        )
    _CHECKED[:] = [generator]


def uniform(
    size: tuple[int, ...], low: float = 0.0, high: float = 1.0, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Float64 draws from U[low, high)."""
    draws = torch.rand(size, generator=generator, dtype=torch.float64)
    return draws if (low, high) == (0.0, 1.0) else draws.mul_(high - low).add_(low)


def randint(low: int, high: int, size: tuple[int, ...], *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Int64 draws from {low, ..., high - 1}."""
    return torch.randint(low, high, size, generator=generator, dtype=torch.long)


def bernoulli(size: tuple[int, ...], p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean draws, True with probability ``p``."""
    if p >= 1.0:
        return torch.ones(size, dtype=torch.bool)
    if p <= 0.0:
        return torch.zeros(size, dtype=torch.bool)
    return torch.rand(size, generator=generator, dtype=torch.float64) < p


def randperm(n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation of ``0..n-1`` (int64)."""
    return torch.randperm(n, generator=generator)


def normal(
    size: tuple[int, ...], *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Standard normal draws (float64 unless ``dtype`` says otherwise; float32 draws are
    several times faster, for large noise fields)."""
    return torch.randn(size, generator=generator, dtype=dtype)


def poisson(rates: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Poisson draw per entry of ``rates`` (a CPU float tensor), same shape and dtype."""
    return torch.poisson(rates, generator=generator)


def numpy_generator(generator: torch.Generator | None = None) -> np.random.Generator:
    """A local NumPy generator seeded by one draw of the torch generator."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    return np.random.default_rng(seed)


def beta(
    size: tuple[int, ...], a: float, b: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Float64 draws from Beta(a, b).

    Beta(1, 1) is U(0, 1) and is drawn as such, from the torch generator (a tenth of the cost
    of seeding a NumPy generator, which the other parameters need).
    """
    if a <= 0 or b <= 0:
        raise HyperParameterError(f"Beta parameters must be > 0, got a={a}, b={b}")
    if a == 1.0 and b == 1.0:
        return uniform(size, generator=generator)
    draws = numpy_generator(generator).beta(a, b, size=size)
    return torch.from_numpy(np.asarray(draws, dtype=np.float64))


def dirichlet(
    size: tuple[int, ...], concentration: list[float] | tuple[float, ...], *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Float64 draws from Dirichlet(concentration); shape ``size + (len(concentration),)``."""
    if any(c <= 0 for c in concentration):
        raise HyperParameterError(f"Dirichlet concentrations must be > 0, got {list(concentration)}")
    draws = numpy_generator(generator).dirichlet(list(concentration), size=size)
    return torch.from_numpy(np.asarray(draws, dtype=np.float64))
