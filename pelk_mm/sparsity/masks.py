"""Binary masks over a model's weights: initialisation, prune-and-regrow, I/O.

This is the data structure behind SLaK-style dynamic sparsity (PeLK trains
with 40 % of every 2-D / 4-D backbone weight pruned). A mask is a bool tensor
of the parameter's shape: ``True`` = active weight, ``False`` = pruned weight,
which is held at exactly zero together with its optimizer moments.

Parameters are addressed by the names of ``model.named_parameters()`` after
unwrapping a DDP / mmengine model wrapper, e.g.
``backbone.stages.0.0.peripheral_conv.weight`` for an mm model
(``EncoderDecoder``, ``ImageClassifier``, ...) and
``stages.0.0.peripheral_conv.weight`` for a bare backbone, which therefore
needs ``include=(r'',)``.
"""
import math
import re
from collections import OrderedDict
from numbers import Real
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from .densities import (densities_to_counts, erk_densities, snip_densities,
                        uniform_densities)
from .selection import bottom_k

INIT_MODES = ('ERK', 'uniform', 'snip', 'from_weights')
GROWTH_MODES = ('random', 'gradient')
#: Element-wise optimizer state held at zero where a weight is pruned: the
#: moments of Adam / AdamW / AMSGrad / RAdam / NAdam / Lion, SGD's momentum,
#: Adamax's ``exp_inf``, Adagrad's ``sum``, RMSprop's ``square_avg`` and
#: ``grad_avg``, Adadelta's ``acc_delta``. Other state (e.g. the step
#: counter) is per tensor and left alone.
MOMENT_KEYS = ('exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'momentum_buffer',
               'exp_inf', 'sum', 'square_avg', 'grad_avg', 'acc_delta')
DEFAULT_INCLUDE = (r'backbone\.', r'head\.')


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP / mmengine model wrapper, else ``model``."""
    return model.module if is_model_wrapper(model) else model


def select_parameters(
    model: nn.Module,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = ()
) -> Dict[str, nn.Parameter]:
    """The parameters a mask covers, in ``named_parameters()`` order.

    A parameter is covered when it is trainable (``requires_grad``: frozen
    stages stay dense), 2-D (linear, 1x1 conv stored as linear) or 4-D
    (convolution, PeLK's compact ``(C, 1, k', k')`` peripheral weight), its
    name ``re.match``-es one ``include`` pattern and no ``exclude``
    pattern. 1-D parameters (biases, norms, layer scales) and the 3-D
    positional embeddings ``(C, K, K)`` are never covered. With the default
    ``include``, ``head.`` matches a classifier's ``head.fc.weight`` but not
    ``decode_head.`` or ``roi_head.`` (``re.match`` anchors at the start).

    Args:
        model: The model, wrapped or not.
        include: Regular expressions matched against the start of the names.
        exclude: Regular expressions of names to leave dense.

    Returns:
        ``{name: parameter}``.
    """
    return OrderedDict((name, p)
                       for name, p in unwrap_model(model).named_parameters()
                       if p.requires_grad and p.dim() in (2, 4) and any(
                           re.match(pat, name) for pat in include) and not any(
                               re.match(pat, name) for pat in exclude))


def check_init(init: str) -> str:
    """``init`` if it is one of :data:`INIT_MODES`, else a ValueError."""
    if init not in INIT_MODES:
        raise ValueError(f'init must be one of {INIT_MODES}, got {init!r}')
    return init


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` if it is a number in [0, 1), else a ValueError."""
    if (not isinstance(sparsity, Real) or isinstance(sparsity, bool)
            or not 0.0 <= sparsity < 1.0):
        raise ValueError(
            f'sparsity must be a number in [0, 1), got {sparsity!r}')
    return sparsity


def check_growth(growth: str) -> str:
    """``growth`` if it is one of :data:`GROWTH_MODES`, else a ValueError."""
    if growth not in GROWTH_MODES:
        raise ValueError(
            f'growth must be one of {GROWTH_MODES}, got {growth!r}')
    return growth


def _locators(model: nn.Module) -> List[Tuple[str, Callable]]:
    """``(prefix, locate)`` of every module of ``model`` that locates its
    parameters (:meth:`pelk_mm.PeLK.locate`), outermost first."""
    return [(f'{path}.' if path else '', module.locate)
            for path, module in unwrap_model(model).named_modules()
            if callable(getattr(module, 'locate', None))]


def layer_group(name: str, model: nn.Module) -> str:
    """The group a masked parameter's density is reported under.

    A parameter of a backbone that locates its parameters (PeLK, through
    :meth:`pelk_mm.PeLK.locate`) is grouped by what it is: the stem
    ``'stem'``, the other downsampling layers ``'downsample'``, and the
    blocks of stage ``i`` one group per kind of layer, e.g.
    ``'stage2.peripheral_conv'`` and ``'stage2.pointwise_conv'``
    (``pointwise_conv1`` and ``2`` together). Any other parameter is grouped
    by its module, e.g. ``'head.fc'``.

    Args:
        name (str): A name of ``model.named_parameters()``.
        model (nn.Module): The model, wrapped or not.
    """
    return _layer_group(name, _locators(model))


def _layer_group(name: str, locators: Sequence[Tuple[str, Callable]]) -> str:
    for prefix, locate in locators:
        where = locate(name, prefix)
        if where.part in ('stem', 'downsample'):
            return where.part
        if where.part == 'block':
            layer = where.rest.split('.')[0].rstrip('0123456789')
            return f'stage{where.stage}.{layer}'
    return name.rpartition('.')[0] or name


def _random_mask(shape: torch.Size, count: int,
                 generator: Optional[torch.Generator]) -> Tensor:
    """A CPU mask with exactly ``count`` active entries drawn uniformly."""
    mask = torch.zeros(shape.numel(), dtype=torch.bool)
    mask[torch.randperm(shape.numel(), generator=generator)[:count]] = True
    return mask.view(shape)


def _snip_scores(model: nn.Module, params: Mapping[str, nn.Parameter],
                 grad_fn: Callable[[], None]) -> Dict[str, Tensor]:
    """SNIP saliency ``|w * dL/dw|`` from one forward / backward pass.

    All gradients of ``model`` are cleared before and after, so that the
    first training step does not accumulate onto them.
    """
    model.zero_grad(set_to_none=True)
    grad_fn()
    scores = {
        name: (p.detach() *
               p.grad).abs() if p.grad is not None else torch.zeros_like(p)
        for name, p in params.items()
    }
    model.zero_grad(set_to_none=True)
    return scores


class SparsityMasks:
    """Bool masks over named parameters of a model.

    Build them with :meth:`init`; :meth:`apply` zeroes the pruned weights
    (and their optimizer moments); :meth:`update` prunes and regrows;
    :meth:`state_dict` / :meth:`load_state_dict` store them. Masks are moved
    to their parameter's device on first use.

    Args:
        masks: ``{parameter name: bool tensor of the parameter's shape}``.
    """

    def __init__(self, masks: Optional[Mapping[str, Tensor]] = None):
        self.masks: Dict[str, Tensor] = OrderedDict()
        # (model, parameters, 0 / 1 masks) of the last apply: see _bind.
        self._bound: Optional[tuple] = None
        if masks is not None:
            self.load_state_dict(masks)

    @classmethod
    def init(cls,
             model: nn.Module,
             sparsity: float = 0.4,
             init: str = 'ERK',
             include: Sequence[str] = DEFAULT_INCLUDE,
             exclude: Sequence[str] = (),
             generator: Optional[torch.Generator] = None,
             grad_fn: Optional[Callable[[], None]] = None,
             erk_power_scale: float = 1.0) -> 'SparsityMasks':
        """Initial masks of the parameters :func:`select_parameters` picks.

        ``ERK``, ``uniform`` and ``snip`` fix a number of active weights per
        layer (exactly ``round((1 - sparsity) * total)`` in all, each layer
        within one weight of its density) and draw that many positions per
        layer uniformly at random with ``generator``. ``snip`` takes the
        per-layer densities from one batch of SNIP saliency ``|w * grad|``
        (SLaK's default init); ``grad_fn`` must run that batch's forward and
        backward pass on ``model``. ``from_weights`` keeps the current zero
        pattern (``mask = weight != 0``), e.g. of a sparse pretrained
        checkpoint; ``sparsity`` is then ignored.

        Args:
            model: The model, wrapped or not.
            sparsity: Fraction of the covered weights to prune, in [0, 1).
            init: One of ``'ERK'``, ``'uniform'``, ``'snip'``,
                ``'from_weights'``.
            include: See :func:`select_parameters`.
            exclude: See :func:`select_parameters`.
            generator: CPU generator of the random positions (default: the
                global one).
            grad_fn: For ``snip`` only: ``grad_fn()`` computes a loss on one
                batch and calls ``backward()`` on it. The gradients it leaves
                are cleared afterwards.
            erk_power_scale: Exponent of the ERK raw score.

        Returns:
            The masks. They are not applied yet: call :meth:`apply`.
        """
        check_init(init)
        check_sparsity(sparsity)
        params = select_parameters(model, include, exclude)
        if not params:
            raise ValueError(
                f'no 2-D / 4-D parameter matches include={tuple(include)} and '
                f'exclude={tuple(exclude)}; for a bare backbone pass '
                "include=(r'',)")
        if init == 'from_weights':
            return cls({n: p.detach() != 0 for n, p in params.items()})
        if init == 'snip' and grad_fn is None:
            raise ValueError(
                "init='snip' needs grad_fn (one batch's backward)")
        shapes = {n: p.shape for n, p in params.items()}
        density = 1.0 - sparsity
        if init == 'ERK':
            densities = erk_densities(shapes, density, erk_power_scale)
        elif init == 'uniform':
            densities = uniform_densities(shapes, density)
        else:
            densities = snip_densities(
                _snip_scores(model, params, grad_fn), density)
        counts = densities_to_counts(shapes, densities, density)
        return cls(
            {n: _random_mask(shapes[n], counts[n], generator)
             for n in params})

    @property
    def density(self) -> float:
        """Overall fraction of active weights over all masked parameters
        (1 without masks)."""
        total = sum(m.numel() for m in self.masks.values())
        active = sum(int(m.sum()) for m in self.masks.values())
        return active / total if total else 1.0

    def layer_densities(self) -> Dict[str, float]:
        """``{name: fraction of active weights}``."""
        return {n: int(m.sum()) / m.numel() for n, m in self.masks.items()}

    def group_counts(self, model: nn.Module) -> Dict[str, Tuple[int, int]]:
        """``{group: (active weights, weights)}`` per :func:`layer_group` of
        ``model`` (wrapped or not), in mask order."""
        locators = _locators(model)
        counts: Dict[str, Tuple[int, int]] = OrderedDict()
        for name, mask in self.masks.items():
            group = _layer_group(name, locators)
            active, total = counts.get(group, (0, 0))
            counts[group] = (active + int(mask.sum()), total + mask.numel())
        return counts

    def _parameters(self, model: nn.Module) -> Dict[str, nn.Parameter]:
        """The masked parameters of ``model``; masks follow their device."""
        named = dict(unwrap_model(model).named_parameters())
        params = OrderedDict()
        for name, mask in self.masks.items():
            if name not in named:
                raise ValueError(f'masked parameter {name!r} is not a '
                                 'parameter of the model')
            if named[name].shape != mask.shape:
                raise ValueError(
                    f'mask of {name!r} has shape {tuple(mask.shape)}, the '
                    f'parameter {tuple(named[name].shape)}')
            if mask.device != named[name].device:
                self.masks[name] = mask.to(named[name].device)
            params[name] = named[name]
        return params

    def _bind(self, model: nn.Module) -> Tuple[List[Tensor], List[Tensor]]:
        """The masked parameters of ``model`` and their masks as 0 / 1
        tensors of the parameter's dtype, in mask order.

        Built once per model and set of masks (:meth:`update` and
        :meth:`load_state_dict` rebuild them), so that :meth:`apply` and
        :meth:`mask_grads` look nothing up by name.
        """
        model = unwrap_model(model)
        if self._bound is None or self._bound[0] is not model:
            params = list(self._parameters(model).values())
            keep = [m.to(p.dtype) for m, p in zip(self.masks.values(), params)]
            self._bound = (model, params, keep)
        return self._bound[1], self._bound[2]

    @torch.no_grad()
    def apply(self,
              model: nn.Module,
              optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Zero the pruned weights and, given ``optimizer``, their moments.

        Weights and moments are multiplied by the 0 / 1 mask: active entries
        are unchanged bit for bit, pruned finite entries become exactly zero.

        Args:
            model: The model, wrapped or not.
            optimizer: Optimizer whose :data:`MOMENT_KEYS` buffers of the
                masked parameters are zeroed at the pruned positions.
        """
        params, keep = self._bind(model)
        tensors, factors = list(params), list(keep)
        if optimizer is not None:
            for p, k in zip(params, keep):
                for buf in _moments(optimizer, p):
                    tensors.append(buf)
                    factors.append(k)
        _mul_(tensors, factors)

    @torch.no_grad()
    def mask_grads(self, model: nn.Module) -> None:
        """Zero the gradients of the pruned weights (multiply by the mask).

        Called right before an optimizer step on weights and moments that
        are zero where pruned, it keeps them exactly zero there for every
        optimizer whose update of an entry vanishes when its weight,
        gradient and moments do (SGD with momentum, Adam, AdamW, ... and
        their weight decay): one multiplication per masked gradient, no
        host synchronisation.
        """
        params, keep = self._bind(model)
        grads = [(p.grad, k) for p, k in zip(params, keep)
                 if p.grad is not None]
        _mul_([g for g, _ in grads], [k for _, k in grads])

    @torch.no_grad()
    def update(self,
               model: nn.Module,
               prune_rate: float,
               growth: str = 'random',
               generator: Optional[torch.Generator] = None,
               optimizer: Optional[torch.optim.Optimizer] = None) -> int:
        """Prune by magnitude and regrow as many weights in every layer.

        In each layer with ``n`` active weights, the ``ceil(prune_rate * n)``
        active weights of smallest ``|w|`` are pruned; the same number of
        positions among the inactive ones (just-pruned ones included, as in
        SLaK) become active: uniformly at random (``'random'``) or those of
        largest ``|grad|`` (``'gradient'``). Every layer keeps its density.
        Pruned weights and their optimizer moments are set to zero; regrown
        positions were inactive, so they start at zero (weight and moments)
        as long as the masks were applied before. Ties go to the lower flat
        index, so identical weights, gradients and generator states give
        identical masks (DDP ranks). Selection is linear-time per layer
        (``kthvalue``), not a sort.

        Layers are left as they are when dense (nothing to regrow into),
        empty, or without a gradient (frozen or unused parameters).

        Args:
            model: The model, wrapped or not, holding the current gradients.
            prune_rate: Fraction of each layer's active weights to move,
                in [0, 1].
            growth: ``'random'`` or ``'gradient'``.
            generator: CPU generator for random growth (default: the global
                one). One ``torch.rand`` of the layer's size is drawn per
                updated layer, in mask order.
            optimizer: Optimizer whose moments to clear (see :meth:`apply`).

        Returns:
            The number of weights pruned (= regrown) over all layers.
        """
        check_growth(growth)
        if not 0.0 <= prune_rate <= 1.0:
            raise ValueError(f'prune_rate must be in [0, 1], got {prune_rate}')
        moved = 0
        inf = float('inf')
        for name, p in self._parameters(model).items():
            mask = self.masks[name].flatten()
            active = int(torch.count_nonzero(mask))
            if p.grad is None or active in (0, mask.numel()):
                continue
            num = math.ceil(prune_rate * active)
            # Prune: the `num` active weights of smallest magnitude.
            mask &= bottom_k(
                torch.where(mask,
                            p.detach().flatten().abs().float(), inf),
                num).logical_not_()
            # Regrow as many among the inactive positions.
            if growth == 'random':
                score = torch.rand(
                    mask.numel(), generator=generator).to(p.device)
            else:
                score = p.grad.detach().flatten().abs().float().neg_()
            mask |= bottom_k(score.masked_fill_(mask, inf), num)
            self.masks[name] = mask.view(p.shape)
            moved += num
        self._bound = None
        self.apply(model, optimizer)
        return moved

    def state_dict(self) -> Dict[str, Tensor]:
        """``{name: bool CPU tensor}``, a copy."""
        return OrderedDict((n, m.detach().to('cpu', copy=True))
                           for n, m in self.masks.items())

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Replace the masks by those of ``state_dict`` (see
        :meth:`state_dict`); they are checked against the model when used."""
        self.masks = OrderedDict((n, m.detach().to(torch.bool, copy=True))
                                 for n, m in state_dict.items())
        self._bound = None


def _mul_(tensors: List[Tensor], factors: List[Tensor]) -> None:
    """``t.mul_(f)`` for each pair: one ``torch._foreach_mul_`` on CUDA (few
    kernel launches), a loop elsewhere (torch's CPU ``_foreach_mul_`` is a
    per-tensor fallback, with no launches to save)."""
    if tensors and tensors[0].is_cuda:
        torch._foreach_mul_(tensors, factors)
    else:
        for t, f in zip(tensors, factors):
            t.mul_(f)


def _moments(optimizer: torch.optim.Optimizer, p: nn.Parameter):
    """The element-wise moment buffers the optimizer keeps for ``p``."""
    state = optimizer.state.get(p, {})
    return [
        state[k] for k in MOMENT_KEYS
        if isinstance(state.get(k), Tensor) and state[k].shape == p.shape
    ]


def count_parameters(model: nn.Module,
                     masks: Optional[SparsityMasks] = None) -> Dict[str, int]:
    """Dense and effective parameter counts of a model.

    Args:
        model: The model, wrapped or not; all its parameters are counted.
        masks: Masks over some of its parameters; ``None`` for a dense model.

    Returns:
        ``dict(dense=..., effective=...)``: ``effective`` is ``dense`` minus
        the pruned entries of ``masks`` (the parameter counts PeLK reports).
    """
    named = dict(unwrap_model(model).named_parameters())
    dense = sum(p.numel() for p in named.values())
    pruned = 0
    for name, mask in (masks.masks.items() if masks is not None else ()):
        if name not in named or named[name].shape != mask.shape:
            raise ValueError(f'mask {name!r} of shape {tuple(mask.shape)} '
                             'matches no parameter of the model')
        pruned += mask.numel() - int(mask.sum())
    return dict(dense=dense, effective=dense - pruned)
