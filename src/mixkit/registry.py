"""The method registry: a decorator and three functions (``list_methods``, ``method_info``,
``create``). Docs tables, the CLI, the benchmarks and the tests all read it."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from mixkit.errors import HyperParameterError, UnknownHyperParameterError, UnknownMethodError, suggest

__all__ = ["FAMILIES", "NEEDS", "MethodInfo", "register", "list_methods", "method_info", "create"]

#: Families of the survey's taxonomy (sample policies, then label policies), and
#: ``baseline`` for training without mixing (ERM).
FAMILIES = (
    "baseline",
    "linear",
    "feature",
    "cutting",
    "multi",
    "random",
    "style",
    "saliency",
    "attention",
    "learnable",
    "generative",
    "label",
)
#: What a method may need besides the batch; an empty tuple means nothing.
NEEDS = ("model", "gradients", "features", "attention", "mixer")

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class MethodInfo:
    """Metadata of a registered method.

    Attributes:
        name: registry name.
        family: one of :data:`FAMILIES`.
        paper: paper title.
        authors: first author et al.
        venue: where and when it was published.
        year: publication year.
        code: URL of the reference code ("" if none was released).
        needs: subset of :data:`NEEDS`; empty when the batch alone suffices.
        sources: how many labels a mixed label combines (an int, or "k" for a variable count).
        defaults: the paper-default hyper-parameters (the constructor's defaults).
        summary: one line on what the method does.
        cls: the implementing class.
    """

    name: str
    family: str
    paper: str
    authors: str
    venue: str
    year: int
    code: str
    needs: tuple[str, ...]
    sources: int | str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)
    cls: type | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metadata (without the class object)."""
        data = asdict(self)
        data.pop("cls")
        data["needs"] = list(self.needs)
        data["defaults"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.defaults.items()}
        data["class"] = f"{self.cls.__module__}.{self.cls.__qualname__}" if self.cls else None
        return data


_REGISTRY: dict[str, MethodInfo] = {}


def _signature_defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {n: p.default for n, p in params.items() if n != "self" and p.default is not inspect.Parameter.empty}


def register(
    name: str,
    *,
    family: str,
    paper: str,
    authors: str,
    venue: str,
    year: int,
    code: str,
    sources: int | str,
    summary: str,
    needs: tuple[str, ...] = (),
) -> Callable[[T], T]:
    """Class decorator that registers a method under ``name`` with its metadata."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"needs must be a subset of {NEEDS}, got {sorted(unknown)}")

    def decorate(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"a method named {name!r} is already registered")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = MethodInfo(
            name=name, family=family, paper=paper, authors=authors, venue=venue, year=year, code=code,
            needs=tuple(needs), sources=sources, summary=summary, defaults=_signature_defaults(cls), cls=cls,
        )
        return cls

    return decorate


def list_methods(pattern: str = "*", family: str | None = None) -> list[str]:
    """Sorted names of registered methods matching a shell-style ``pattern`` and ``family``."""
    if family is not None and family not in FAMILIES:
        raise HyperParameterError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    return sorted(
        n for n, info in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern) and (family is None or info.family == family)
    )


def method_info(name: str) -> MethodInfo:
    """Metadata of the method registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"no method named {name!r}.{suggest(name, _REGISTRY)} Registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create(name: str, **hparams: Any) -> Any:
    """Build the method ``name`` with the given hyper-parameters (paper defaults for the rest)."""
    info = method_info(name)
    assert info.cls is not None
    allowed = set(info.defaults) | {
        n for n, p in inspect.signature(info.cls.__init__).parameters.items() if n != "self"
    }
    for key in hparams:
        if key not in allowed:
            raise UnknownHyperParameterError(
                f"{name} has no hyper-parameter {key!r}.{suggest(key, allowed)} "
                f"Valid: {', '.join(sorted(allowed))}"
            )
    return info.cls(**hparams)
