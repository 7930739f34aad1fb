"""Models by name: ``torchvision:resnet18``, ``package.module:factory``, or featviz's own SmallCNN.

A *spec* names a factory, a callable that returns an ``nn.Module``: ``MODULE:ATTR`` (``torchvision:X`` is
short for ``torchvision.models:X``). A run records the spec, its keyword arguments, the input channels
and the class count (``configs.model``), so every stage rebuilds the same network and loads a
snapshot into it.

Safety: importing a module and calling a factory run code. A run folder is data, so the stages build
on their own only torchvision's classification model builders and featviz's small CNN (``is_trusted``),
and any other factory only when the user names the same spec on the command line (``--model``) or
says ``--trust-run-code``. Weights are never downloaded
unless ``pretrained`` is asked for.
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torchvision
from torch import nn

from featviz.errors import ConfigError, one_line
from featviz.hooks import evaluating
from featviz.run.fileio import MAX_DEPTH, json_depth

OWN_FACTORIES = ("featviz.model:small_cnn",)  # featviz's own model builders
DOWNLOADS = ("weights", "weights_backbone", "pretrained")  # torchvision's kwargs that fetch weights from the internet


@dataclass(frozen=True)
class ModelSpec:
    factory: str  # "module.path:attr", e.g. "torchvision.models:resnet18"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the factory (JSON values only)
    in_channels: int = 3  # the data's colour channels; the first conv is adapted when the factory cannot
    num_classes: int = 10  # the data's classes; passed as num_classes= when the factory takes it
    pretrained: bool = False  # torchvision only: load its default weights (downloads on the user's machine)

    def as_dict(self) -> dict[str, Any]:
        return {
            "factory": self.factory,
            "kwargs": dict(self.kwargs),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "pretrained": self.pretrained,
        }


def normalize_spec(spec: str) -> str:
    """'torchvision:resnet18' -> 'torchvision.models:resnet18'; 'pkg.mod:factory' unchanged; anything
    without exactly one ':' between a module path and a name is a ConfigError."""
    text = spec.strip()
    mod, sep, attr = text.partition(":")
    if (
        not sep
        or not mod
        or not attr
        or ":" in attr
        or not all(p.isidentifier() for p in mod.split("."))
        or not all(p.isidentifier() for p in attr.split("."))
    ):
        raise ConfigError(
            f"bad model spec {spec!r}: use torchvision:NAME (e.g. torchvision:resnet18) or package.module:factory"
        )
    if mod == "torchvision":
        mod = "torchvision.models"
    return f"{mod}:{attr}"


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """--model-kwargs: a JSON object, or a ConfigError that says what is wrong."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-kwargs is not valid JSON: {e.msg} at character {e.pos}") from None
    except RecursionError:
        raise ConfigError(f"--model-kwargs is nested deeper than {MAX_DEPTH} levels") from None
    if json_depth(value) > MAX_DEPTH:
        raise ConfigError(f"--model-kwargs is nested deeper than {MAX_DEPTH} levels")
    if not isinstance(value, dict):
        raise ConfigError("--model-kwargs must be a JSON object, e.g. '{\"width_mult\": 0.5}'")
    return value


def is_trusted(factory: str) -> bool:
    """Whether a run folder may name ``factory`` by itself: torchvision's registered model builders
    (``torchvision.models.list_models()``, classification ones) and featviz's own. Not "anything in
    torchvision or featviz": other callables there write files or download data when given kwargs."""
    spec = normalize_spec(factory)
    if spec in OWN_FACTORIES:
        return True
    mod, attr = spec.split(":")
    if mod != "torchvision.models":
        return False
    return attr in torchvision.models.list_models(module=torchvision.models)


def model_flag(factory: str | None) -> str:
    """' --model FACTORY' where later commands on a run of ``factory`` need it (a run alone imports no
    user code), else ''."""
    return f" --model {factory}" if factory and not is_trusted(factory) else ""


def check_trust(factory: str, given: str | None, trust_run_code: bool) -> None:
    """Refuse, before anything is imported, to import a factory a run folder names by itself."""
    if is_trusted(factory) or trust_run_code:
        return
    if given is not None and normalize_spec(given) == factory:
        return
    hint = f"pass --model {factory} if you trust it (or --trust-run-code)"
    if given is not None:
        raise ConfigError(f"this run's model is {factory}, not {normalize_spec(given)}; nothing was imported; {hint}")
    raise ConfigError(
        f"this run's model comes from {factory}, which is not a torchvision model builder or featviz's "
        f"own; nothing was imported; {hint}"
    )


def resolve_factory(factory: str) -> Callable[..., nn.Module]:
    """Import ``module:attr`` and return the callable; a missing module or name is a ConfigError."""
    mod_name, attr = normalize_spec(factory).split(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(
            f"cannot import {mod_name} for model {factory}: {one_line(e)} "
            "(is the package installed, or the folder on PYTHONPATH?)"
        ) from None
    for part in attr.split("."):
        if part.startswith("_") or inspect.ismodule(obj) and obj.__name__ != mod_name:
            raise ConfigError(f"model {factory}: name a function or class defined in {mod_name}, not {attr!r}")
        if not hasattr(obj, part):
            raise ConfigError(f"{mod_name} has no {attr!r} (model {factory})")
        obj = getattr(obj, part)
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
        raise ConfigError(f"model {factory} is not a function or class")
    return obj


def build(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """The network of ``spec`` with its input channels and class count adapted to the data; with
    ``seed`` the random init is a pure function of (spec, seed)."""
    fn = resolve_factory(spec.factory)
    kwargs = dict(spec.kwargs)
    params = _parameters(fn)
    if "num_classes" in params and "num_classes" not in kwargs:
        kwargs["num_classes"] = spec.num_classes
    if "in_channels" in params and "in_channels" not in kwargs:
        kwargs["in_channels"] = spec.in_channels
    asked = [k for k in DOWNLOADS if kwargs.get(k) not in (None, False)]
    if asked and not spec.pretrained and spec.factory.startswith("torchvision."):
        raise ConfigError(
            f"model kwargs ask for downloaded weights ({asked[0]}={_short(kwargs[asked[0]])}); "
            "featviz never downloads by itself: use --pretrained (torchvision models) when you mean it"
        )
    if spec.pretrained:
        if not spec.factory.startswith("torchvision."):
            raise ConfigError("--pretrained works for torchvision models; load your own weights in your factory")
        kwargs.setdefault("weights", "DEFAULT")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = fn(**kwargs)
        except Exception as e:  # noqa: BLE001 - a factory can raise anything; say which call failed
            raise ConfigError(f"model {spec.factory}({_show(kwargs)}) failed: {one_line(e, 200)}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {spec.factory} returned {type(model).__name__}, not a torch.nn.Module")
        _adapt_input(model, spec)
    return model


def logits_of(out: Any) -> Any:
    """The class scores of a forward pass: the tensor itself, the first element of a tuple or list
    (Inception/GoogLeNet auxiliary outputs, a namedtuple), or ``.logits`` (Hugging Face style)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)) and out:
        return logits_of(out[0])
    return getattr(out, "logits", out)


def check_output(model: nn.Module, spec: ModelSpec, size: int) -> None:
    """One forward pass on zeros: the model must take [2, C, size, size] and return [2, num_classes]."""
    try:
        with evaluating(model):
            out = model(torch.zeros(2, spec.in_channels, size, size))
    except Exception as e:  # noqa: BLE001 - a user's model can raise anything; say what failed
        raise ConfigError(
            f"model {spec.factory} cannot take {spec.in_channels}x{size}x{size} images: {one_line(e, 200)}"
        ) from None
    out = logits_of(out)
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape[1] != spec.num_classes:
        shape = list(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(
            f"model {spec.factory} returns {shape} for 2 images, the data has {spec.num_classes} "
            f"classes; pass --model-kwargs '{{\"num_classes\": {spec.num_classes}}}' or make the "
            "factory take num_classes"
        )


def _parameters(fn: Callable[..., Any]) -> set[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set()
    names = set(sig.parameters)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()) and fn.__module__.startswith("torchvision"):
        names.add("num_classes")  # torchvision builders take **kwargs and pass num_classes to the class
    return names


def _adapt_input(model: nn.Module, spec: ModelSpec) -> None:
    """Replace the first conv by one with ``spec.in_channels`` inputs when it has another count (a
    3-channel torchvision stem on grayscale data); same kernel, stride and padding, fresh init."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels == spec.in_channels:
        return
    name, conv = first
    if conv.groups != 1:
        raise ConfigError(
            f"the first conv of {spec.factory} ({name}) is grouped and takes {conv.in_channels} "
            f"channels, the data has {spec.in_channels}; change the model's input layer"
        )
    new = nn.Conv2d(
        spec.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        1,
        conv.bias is not None,
        conv.padding_mode,
    )
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _show(kwargs: dict[str, Any]) -> str:
    """The kwargs as a call's arguments, each value cut to 60 characters and the whole to 200 (error messages)."""
    text = ", ".join(f"{str(k)[:40]}={_short(v)}" for k, v in kwargs.items())
    return text if len(text) <= 200 else text[:199] + "…"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:59] + "…"
