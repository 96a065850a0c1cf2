"""Keeping a FOSSILIZED seed that does not merge beside its host layer, for :func:`~kasmina.executor.export.export`.

Its own module because it is all torch.fx: the seed and its blend at alpha 1 traced into a
GraphModule (plain torch, pickled as its generated source) and attached to the host layer
as child ``seed`` and forward hook. It also holds what tells Kasmina's own classes and hooks
apart, which ``export.py`` uses for its plain copy of the model too. A private helper of
``export.py``: nothing here is public API.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
from torch import Tensor, fx, nn

from kasmina.catalogue.sites import describe
from kasmina.errors import KasminaError
from kasmina.executor.site import module_placement, primary_input
from kasmina.kernels.blend import BlenderConfig, BlendMode, channels_last

if TYPE_CHECKING:
    from kasmina.executor.export import _Plan

#: Name of a kept seed's child module on its host layer (``fc.seed.down.weight``).
SEED_CHILD = "seed"
#: Hook tables of ``nn.Module``: Kasmina's own (the counterfactual's batch capture) are not exported.
_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                "_load_state_dict_post_hooks")
#: Methods that make a class compute something other than its torch base class.
_FORWARD_NAMES = frozenset({"forward", "_conv_forward", "__call__", "_call_impl"})


# -- Kasmina's own classes and hooks ------------------------------------------------------------


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "kasmina"


def _ours_callable(fn: Any) -> bool:
    fn = getattr(fn, "func", fn)  # a functools.partial
    module = getattr(fn, "__module__", None) or type(fn).__module__
    return isinstance(module, str) and module.split(".")[0] == "kasmina"


def _hook_tables(module: nn.Module) -> Iterator[dict[int, Any]]:
    for table in _HOOK_TABLES:
        hooks = getattr(module, table, None)
        if isinstance(hooks, dict):
            yield hooks


def _first_line(error: BaseException) -> str:
    """An error's first line, for the one-line KasminaErrors here and in ``export.py``."""
    return (str(error).strip().splitlines() or [""])[0]


# -- keeping a seed beside its layer --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    """How a site is called: where its input is, what its output is (seen on the probe)."""

    index: int | None = 0
    key: str | None = None
    output: str = "tensor"


def _call_of(args: tuple[Any, ...], kwargs: Mapping[str, Any], output: Any) -> _Call | str:
    x = primary_input(args, kwargs)
    index = next((i for i, a in enumerate(args) if a is x), None)
    key = None if index is not None else next((k for k, v in kwargs.items() if v is x), None)
    if isinstance(output, Tensor):
        return _Call(index, key, "tensor")
    if type(output) in (tuple, list):  # rebuilt as one: a named tuple or a ModelOutput would lose its type
        return _Call(index, key, type(output).__name__)
    return f"its layer returns a {type(output).__name__}; a kept seed needs a tensor, tuple or list"


class _Graft(nn.Module):
    """The seed and its blend at alpha 1, as a forward hook; traced once, never run as is.

    The blend mirrors :func:`kasmina.kernels.blend.blend` for a FOSSILIZED seed (alpha 1.0,
    host not detached) with the site's shapes fixed, because that function branches on
    shapes, which torch.fx cannot trace.
    """

    def __init__(self, seed: nn.Module, config: BlenderConfig, call: _Call, ndim: int | None, channel_dim: int,
                 channels: int | None, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.seed = seed
        self.config = config
        self.call = call
        self.last = ndim is None or channel_dim == -1 or channels_last(ndim, channel_dim)
        self.ndim = ndim or 2
        self.channels = channels
        self.calc = torch.float64 if dtype == torch.float64 else torch.float32
        if config.mode is BlendMode.CHANNEL:
            shape = (-1,) if self.last else (1, -1) + (1,) * (self.ndim - 2)
            vec = torch.tensor(config.alpha_vec or (), dtype=dtype, device=device).view(shape)
            self.register_buffer("blend_weight", vec * 1.0)

    def forward(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        call = self.call
        x = args[call.index] if call.index is not None else kwargs[call.key]
        host = output if call.output == "tensor" else output[0]
        seed = self.seed(x).to(host.dtype)
        mode = self.config.mode
        if mode is BlendMode.CONVEX:
            out = torch.lerp(host, seed, 1.0)
        elif mode is BlendMode.RESIDUAL:
            out = torch.add(host, seed, alpha=1.0)
        elif mode is BlendMode.CHANNEL:
            out = torch.lerp(host, seed, self.blend_weight)
        else:
            out = torch.lerp(host, seed, self._confidence(seed))
        if call.output == "tensor":
            return out
        return (out,) + output[1:] if call.output == "tuple" else [out] + output[1:]

    def _confidence(self, seed: Any) -> Any:
        """CONFIDENCE's per-sample (or per-token) weight at alpha 1, as ``blend`` computes it."""
        cfg, calc = self.config, self.calc
        z = seed.detach()
        if not self.last and self.ndim > 2:  # channels on dim 1: the margin of the spatial mean
            dims = tuple(range(2, self.ndim))
            size = z.shape[2]
            for d in dims[1:]:
                size = size * z.shape[d]
            z = z.sum(dim=dims, dtype=calc) * (1.0 / size)
        if self.channels is not None and self.channels < 2:
            margin = torch.ones(z.shape[:-1] if self.last else z.shape[:1], dtype=calc, device=z.device)
        elif self.last:
            top2 = torch.softmax(z, dim=-1, dtype=calc).topk(2, dim=-1).values
            margin = top2[..., 0] - top2[..., 1]
        else:
            top2 = torch.softmax(z, dim=1, dtype=calc).topk(2, dim=1).values
            margin = top2[:, 0] - top2[:, 1]
        gate = margin.sub_(cfg.gate_tau).mul_(cfg.gate_k).sigmoid_()
        eff = gate * 1.0
        if cfg.alpha_lo > 0.0 or cfg.alpha_hi < 1.0:
            eff = eff.clamp(cfg.alpha_lo, cfg.alpha_hi)
        weight = eff.to(seed.dtype)
        if self.last:
            return weight.unsqueeze(-1)
        return weight.view((-1,) + (1,) * (self.ndim - 1))


class _RankedProxy(fx.Proxy):
    """The site's input while tracing: its rank is known (a seed may branch on ``x.dim()``)."""

    def dim(self) -> int:
        rank = getattr(self.tracer, "rank", None)
        if rank is None:
            raise fx.proxy.TraceError("the rank of the site's input is not known (the site never ran)")
        return int(rank)

    @property
    def ndim(self) -> int:
        return self.dim()


class _Tracer(fx.Tracer):
    """Traces Kasmina's classes down to torch; every other module (torch's, the user's) stays a module."""

    def __init__(self, rank: int | None) -> None:
        super().__init__()
        self.rank = rank

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # A seed that is one torch layer is traced too, so its parameters keep their names
        # (``fc.seed.weight``); a class of the user's stays as it is, as their host's do.
        if module_qualified_name == SEED_CHILD and type(m).__module__.split(".")[0] == "torch":
            return False
        return not _ours(type(m))

    def proxy(self, node: fx.Node) -> fx.Proxy:
        source = node.args[0] if node.op == "call_function" and node.target is operator.getitem else None
        if isinstance(source, fx.Node) and source.op == "placeholder" and source.target in ("args", "kwargs"):
            return _RankedProxy(node, self)
        return super().proxy(node)


def _torch_base(cls: type) -> type | None:
    """The torch class a Kasmina layer only re-initialises (``SeedLinear``: ``nn.Linear``)."""
    mro = cls.__mro__
    for i, base in enumerate(mro):
        if not _ours(base):
            own = set().union(*(vars(c).keys() for c in mro[:i]))
            return base if base is not nn.Module and not own & _FORWARD_NAMES else None
    return None


def _plain_seed(seed: nn.Module) -> nn.Module:
    """A copy of the seed whose layers are torch's own classes where they only re-initialise them."""
    plain = copy.deepcopy(seed)
    for module in plain.modules():
        if _ours(type(module)):
            base = _torch_base(type(module))
            if base is not None:
                module.__class__ = base
        for hooks in _hook_tables(module):
            for key in [k for k, hook in hooks.items() if _ours_callable(hook)]:
                del hooks[key]
    return plain


def _graft(plan: _Plan, call: _Call) -> fx.GraphModule:
    """The kept seed as a GraphModule: the seed's parameters under their own names (``down.weight``)."""
    site = plan.site
    assert site.seed is not None
    info = describe(plan.name, site.base_layer, site.probe)
    device, dtype = module_placement(site.base_layer)
    root = _Graft(_plain_seed(site.seed), site.config or BlenderConfig(), call, info.out_ndim, site.channel_dim,
                  info.out_features, device, dtype)
    rank = len(site.probe.in_shape) + 1 if site.probe is not None else None
    try:
        graph = _trace(_Tracer(rank), root)
    except Exception as e:  # noqa: BLE001 - any tracing failure is this seed's, said in one line
        what = plan.blueprint or type(site.seed).__name__
        raise KasminaError(f"export: the seed at {plan.name!r} ({what}) cannot be kept as plain torch: torch.fx "
                           f"cannot trace it ({type(e).__name__}: {_first_line(e)}); merge it, or cull it") from None
    objects: dict[str, Any] = {}
    prefix = SEED_CHILD + "."
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            target = str(node.target)
            obj = _attr(root, target)
            node.target = target.removeprefix(prefix)
            objects[node.target] = obj
    graft = fx.GraphModule(objects, graph, class_name="SeedGraft")
    graft.train(site.seed.training)
    return graft


def _trace(tracer: fx.Tracer, root: nn.Module) -> fx.Graph:
    """``tracer.trace(root)``, cleaned so that the GraphModule built on it pickles without Kasmina."""
    graph = tracer.trace(root)
    graph._tracer_cls = None  # the tracer is Kasmina's: a pickled GraphModule must not name it
    for node in graph.nodes:
        node.type = None  # this module's annotations are strings, which the generated code cannot import
    return graph


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _host_for_seed(exported: nn.Module, name: str) -> nn.Module:
    """The layer at ``name``, made ready to hold a seed: a Sequential (which runs every child
    in turn) becomes a GraphModule of the same layers, which runs only what its graph says."""
    host = exported.get_submodule(name)
    if isinstance(host, nn.Sequential):
        host = fx.GraphModule(host, _trace(_AllLeaves(), host))
        parent_name, _, child = name.rpartition(".")
        setattr(exported.get_submodule(parent_name) if parent_name else exported, child, host)
    return host


def _in_graph(host: nn.Module, call: _Call) -> _Call:
    """How the graft finds the input when a GraphModule host calls it with all its placeholders."""
    if not isinstance(host, fx.GraphModule) or call.key is None:
        return call
    names = [str(n.target) for n in host.graph.nodes if n.op == "placeholder"]
    return _Call(names.index(call.key) if call.key in names else 0, None, call.output)


def _attach(host: nn.Module, graft: fx.GraphModule) -> None:
    """Make ``graft`` child ``seed`` of ``host`` and run it on the host's output.

    Through a forward hook, or for a GraphModule host as the last node of its graph: a
    GraphModule is pickled as its code and rebuilt from it, and its own hooks are not kept.
    """
    child_name = SEED_CHILD
    while hasattr(host, child_name):
        child_name += "_"
    host.add_module(child_name, graft)
    if not isinstance(host, fx.GraphModule):
        host.register_forward_hook(graft, with_kwargs=True)
        return
    graph = host.graph
    inputs = tuple(n for n in graph.nodes if n.op == "placeholder")
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        grafted = graph.call_module(child_name, (None, inputs, {}, output.args[0]))
    output.args = (grafted,)
    host.recompile()


class _AllLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True
