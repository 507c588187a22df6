"""mmengine hook for SLaK-style dynamic sparsity, exact under AMP, gradient
accumulation, DDP and resume."""
import math
from typing import List, Optional, Sequence

import torch
from mmengine.dist import broadcast, broadcast_object_list
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from torch import Tensor

from .masks import (DEFAULT_INCLUDE, MOMENT_KEYS, SparsityMasks, check_growth,
                    check_init, check_sparsity, select_parameters,
                    unwrap_model)

MODES = ('auto', 'dynamic', 'fixed')
CHECKPOINT_KEY = 'sparsity'
#: Settings a ``--resume`` must keep (stored in the checkpoint): the masks'
#: coverage always, the schedule of a ``'dynamic'`` run too.
RESUME_SETTINGS = dict(
    fixed=('include', 'exclude'),
    dynamic=('include', 'exclude', 'sparsity', 'update_interval', 'prune_rate',
             'min_prune_rate', 'decay_steps', 'stop_step', 'growth'))


def cosine_prune_rate(step: int, total_steps: int, initial: float,
                      final: float) -> float:
    """SLaK's prune-rate schedule (``CosineDecay``).

    ``final + (initial - final) * (1 + cos(pi * t / T)) / 2`` with
    ``t = min(step, T)`` optimizer steps and ``T = total_steps``.
    """
    t = min(step, total_steps) / total_steps
    return final + 0.5 * (initial - final) * (1.0 + math.cos(math.pi * t))


def _some(names: List[str]) -> str:
    """The first 3 names, and '...' when there are more."""
    return f'{names[:3]}{" ..." if len(names) > 3 else ""}'


def zero_fraction(params) -> float:
    """Fraction of exact zeros over all entries of ``params`` (0 if none)."""
    params = list(params)
    total = sum(p.numel() for p in params)
    zeros = sum(p.numel() - int(torch.count_nonzero(p)) for p in params)
    return zeros / total if total else 0.0


def _probe(optimizer: torch.optim.Optimizer):
    """A throwaway optimizer of ``optimizer``'s class and settings over one
    zero parameter of shape ``(2, 2)`` with a zero gradient, or None when
    the class cannot be built from its own ``defaults``."""
    param = torch.zeros(2, 2, requires_grad=True)
    param.grad = torch.zeros(2, 2)
    try:
        return type(optimizer)([param], **optimizer.defaults)
    except (TypeError, ValueError, RuntimeError):
        return None


def step_hooks_run(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``type(optimizer).step`` runs its step pre-hooks.

    Probed with one step of a throwaway optimizer of the same class and
    settings (see ``docs/sparsity.md`` for the torch versions whose Dynamo
    disables them).

    Args:
        optimizer (torch.optim.Optimizer): The optimizer to probe.

    Returns:
        bool: False when a registered step pre-hook did not fire; True when
        it did, or when the class cannot be built from its ``defaults``.
    """
    probe = _probe(optimizer)
    if probe is None:
        return True
    fired = []
    probe.register_step_pre_hook(lambda *args: fired.append(True))
    probe.step()
    return bool(fired)


def unknown_state_keys(optimizer: torch.optim.Optimizer) -> List[str]:
    """The element-wise state of ``optimizer``'s class that the masks do not
    reset: keys of state tensors shaped like the parameter, not in
    :data:`MOMENT_KEYS`.

    Probed with one step of a throwaway optimizer of the same class and
    settings on a zero gradient.

    Args:
        optimizer (torch.optim.Optimizer): The optimizer to probe.

    Returns:
        list[str]: Sorted keys, e.g. ``['prev', 'step_size']`` for
        ``Rprop``; empty for SGD, Adam, AdamW, ... and for a class that
        cannot be built from its ``defaults`` or stepped without a closure.
    """
    probe = _probe(optimizer)
    if probe is None:
        return []
    try:
        probe.step()
    except (TypeError, RuntimeError):  # e.g. LBFGS needs a closure
        return []
    param = probe.param_groups[0]['params'][0]
    return sorted(key for key, value in probe.state.get(param, {}).items()
                  if isinstance(value, Tensor) and value.shape == param.shape
                  and key not in MOMENT_KEYS)


@HOOKS.register_module()
class DynamicSparsityHook(Hook):
    """Train with sparse weights: SLaK's dynamic sparsity, or fixed masks.

    Masks cover the 2-D / 4-D parameters of the (unwrapped) model whose names
    match ``include`` and not ``exclude`` and that are trainable
    (:func:`select_parameters`; parameters with ``requires_grad=False``, e.g.
    PeLK's ``frozen_stages``, stay dense as loaded). Any model works, PeLK or
    not; only the density log groups a PeLK's layers by kind.

    Before the first iteration (``before_train``, after ``init_cfg`` and
    ``load_from`` have loaded the weights) the mode in use is decided:
    ``'dynamic'`` and ``'fixed'`` as given; ``'auto'`` picks ``'fixed'`` when
    at least ``min_zero_fraction`` of the covered weights are exact zeros,
    else ``'dynamic'``. ``'dynamic'`` initialises masks of total density
    ``1 - sparsity`` (``init``) and, every ``update_interval`` optimizer
    steps until ``stop_step``, prunes in every layer the
    ``ceil(r * active)`` active weights of smallest magnitude and regrows as
    many (``growth``), with ``r`` the cosine decay from ``prune_rate`` to
    ``min_prune_rate`` over ``decay_steps`` (:func:`cosine_prune_rate`).
    ``'fixed'`` keeps ``mask = weight != 0`` of the loaded weights.

    Contract, in every mode: after the masks are applied and after every
    optimizer step, every pruned weight and its element-wise optimizer state
    (:data:`MOMENT_KEYS`) are exactly zero; a regrown weight starts from zero
    weight and zero state. Optimizer steps, not iterations, are counted
    (gradient accumulation, steps skipped by a loss scaler). Under DDP the
    masks are identical on every rank. ``before_save_checkpoint`` stores
    ``checkpoint['sparsity'] = dict(masks, step, generator, mode,
    settings)``; ``--resume`` restores it (an explicit ``mode`` wins over the
    stored one) and continues bit for bit; ``load_from`` (no resume) keeps
    the checkpoint's masks in ``'dynamic'`` mode with a fresh schedule. How
    this is achieved: ``docs/sparsity.md``.

    Args:
        mode (str): ``'auto'``, ``'dynamic'`` or ``'fixed'``.
            Defaults to ``'dynamic'``.
        sparsity (float): Fraction of the covered weights pruned
            (``'dynamic'``), in [0, 1). Defaults to 0.4.
        init (str): Mask initialisation (``'dynamic'``): ``'snip'`` (SLaK's;
            one batch of random training samples), ``'ERK'``, ``'uniform'``
            or ``'from_weights'``. Defaults to ``'snip'``.
        include (Sequence[str]): Parameter-name patterns to mask
            (``re.match``). Defaults to ``backbone.`` and a classifier's
            ``head.``; ``('',)`` for a bare backbone.
        exclude (Sequence[str]): Parameter-name patterns to leave dense.
            Defaults to none.
        update_interval (int): Optimizer steps between prune-and-regrow
            updates, >= 1 (SLaK: 100; 2000 for PeLK-T). Defaults to 100.
        prune_rate (float): Initial prune rate, in [min_prune_rate, 1]
            (SLaK: 0.3; 0.5 for PeLK-T). Defaults to 0.3.
        min_prune_rate (float): Prune rate at the end of the cosine decay,
            >= 0. Defaults to 0.005.
        decay_steps (int, optional): Optimizer steps of the decay, >= 1;
            None: ``ceil(max_iters / accumulative_counts)``.
        stop_step (int, optional): Last optimizer step at which masks are
            updated, >= 0; None: until the end. Masks still apply afterwards.
        growth (str): ``'random'`` or ``'gradient'``. Defaults to
            ``'random'``.
        seed (int, optional): Seed of the growth / init generator;
            None: ``runner.seed``.
        erk_power_scale (float): Exponent of the ERK raw score.
            Defaults to 1.0.
        min_zero_fraction (float): Fraction of exact zeros over the covered
            weights from which they count as sparse (``'auto'`` picks
            ``'fixed'``; ``'fixed'`` needs it), in (0, 1). Defaults to 0.1.

    Raises:
        ValueError: at construction, an argument out of its range above;
            before training, an ``OptimWrapperDict``, no parameter covered,
            ``'fixed'`` on weights that are not sparse, an optimizer with
            element-wise state the masks do not know
            (:func:`unknown_state_keys`); on ``--resume``, a setting that
            differs from the checkpoint's run (:data:`RESUME_SETTINGS`).
        RuntimeError: the optimizer no longer runs step hooks
            (:func:`step_hooks_run`).
    """

    def __init__(self,
                 mode: str = 'dynamic',
                 sparsity: float = 0.4,
                 init: str = 'snip',
                 include: Sequence[str] = DEFAULT_INCLUDE,
                 exclude: Sequence[str] = (),
                 update_interval: int = 100,
                 prune_rate: float = 0.3,
                 min_prune_rate: float = 0.005,
                 decay_steps: Optional[int] = None,
                 stop_step: Optional[int] = None,
                 growth: str = 'random',
                 seed: Optional[int] = None,
                 erk_power_scale: float = 1.0,
                 min_zero_fraction: float = 0.1):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        # the masks' own checks, here so that a bad config fails at once
        check_init(init)
        check_growth(growth)
        check_sparsity(sparsity)
        if int(update_interval) != update_interval or update_interval < 1:
            raise ValueError('update_interval must be a positive integer, '
                             f'got {update_interval}')
        if not 0.0 <= min_prune_rate <= prune_rate <= 1.0:
            raise ValueError(
                'need 0 <= min_prune_rate <= prune_rate <= 1, got '
                f'min_prune_rate={min_prune_rate}, prune_rate={prune_rate}')
        if decay_steps is not None and decay_steps < 1:
            raise ValueError(
                f'decay_steps must be positive or None, got {decay_steps}')
        if stop_step is not None and stop_step < 0:
            raise ValueError(
                f'stop_step must be >= 0 or None, got {stop_step}')
        if not 0.0 < min_zero_fraction < 1.0:
            raise ValueError('min_zero_fraction must be in (0, 1), got '
                             f'{min_zero_fraction}')
        self.mode = mode
        self.sparsity = sparsity
        self.init = init
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.update_interval = int(update_interval)
        self.prune_rate = prune_rate
        self.min_prune_rate = min_prune_rate
        self.decay_steps = decay_steps
        self.stop_step = stop_step
        self.growth = growth
        self.seed = seed
        self.erk_power_scale = erk_power_scale
        self.min_zero_fraction = min_zero_fraction

        self.masks: Optional[SparsityMasks] = None
        self.active_mode: Optional[str] = None  # 'dynamic' / 'fixed' in use
        self.generator = torch.Generator()
        # Optimizer steps: `_step` counts every optimizer.step() call as a
        # step; `_skipped` sums, on the device, the fused optimizer's
        # `found_inf` flags not yet subtracted from it (see `step`).
        self._step = 0
        self._skipped: Optional[Tensor] = None
        self._next_update = math.inf
        self._loaded: Optional[dict] = None  # checkpoint state, resume only
        self._loaded_masks: Optional[dict] = None  # load_from's masks
        self._handle = None
        self._optimizer = None
        self._first_iter_done = True
        self._runner = None
        self._model = None
        self._total_steps = 1

    @property
    def step(self) -> int:
        """Real optimizer steps taken so far (reading it may synchronise
        with the device once, when a fused optimizer skipped steps)."""
        if self._skipped is not None:
            self._step -= int(self._skipped.item())
            self._skipped = None
        return self._step

    # ------------------------------------------------------------------ setup
    def before_train(self, runner) -> None:
        """Decide the mode, build (or restore) the masks, apply them, hook
        the optimizer."""
        if isinstance(runner.optim_wrapper, OptimWrapperDict):
            raise ValueError(
                'DynamicSparsityHook needs a single OptimWrapper, '
                'got an OptimWrapperDict')
        model = unwrap_model(runner.model)
        optimizer = runner.optim_wrapper.optimizer
        unknown = unknown_state_keys(optimizer)
        if unknown:
            raise ValueError(
                f'DynamicSparsityHook keeps pruned weights and their '
                f'element-wise optimizer state at zero, but '
                f'{type(optimizer).__name__} keeps state {unknown} that it '
                f'does not know how to reset (it resets {list(MOMENT_KEYS)}); '
                'use an optimizer whose state is among those, e.g. SGD, '
                'Adam, AdamW, Adagrad, RMSprop')
        covered = select_parameters(model, self.include, self.exclude)
        if not covered:
            candidates = [
                n for n, p in model.named_parameters() if p.dim() in (2, 4)
            ]
            raise ValueError(
                'DynamicSparsityHook covers no parameter of '
                f'{type(model).__name__}: no trainable 2-D / 4-D parameter '
                f'matches include={self.include} and exclude={self.exclude} '
                f'(its 2-D / 4-D parameters: {_some(candidates)}); set '
                'include to patterns of the weights to sparsify, e.g. '
                "include=('',) for all of them")
        self._runner = runner
        self._model = model
        self._total_steps = self.decay_steps or math.ceil(
            runner.max_iters /
            getattr(runner.optim_wrapper, '_accumulative_counts', 1))
        self._skipped = None

        if self._loaded is not None:
            self.active_mode = self._resumed_mode(self._loaded)
            self.masks = self._loaded_as_covered(self._loaded['masks'],
                                                 covered)
            self._step = int(self._loaded['step'])
            self.generator.set_state(self._loaded['generator'])
            how = (f'resumed at optimizer step {self._step} in '
                   f'{self.active_mode!r} mode')
        else:
            self.active_mode, how = self._decide_mode(model)
            seed = [self.seed if self.seed is not None else runner.seed]
            broadcast_object_list(seed)
            self.generator.manual_seed(int(seed[0]))
            self._step = 0
            if (self.active_mode == 'dynamic'
                    and self._loaded_masks is not None):
                self.masks = self._loaded_as_covered(self._loaded_masks,
                                                     covered)
                how += '; masks of the loaded checkpoint'
            else:
                init = ('from_weights'
                        if self.active_mode == 'fixed' else self.init)
                self.masks = self._broadcast(
                    SparsityMasks.init(
                        model,
                        sparsity=self.sparsity,
                        init=init,
                        include=self.include,
                        exclude=self.exclude,
                        generator=self.generator,
                        grad_fn=self._snip_grad_fn(runner, model),
                        erk_power_scale=self.erk_power_scale), model)
                how += f'; masks init={init!r}'
        self._loaded = self._loaded_masks = None
        self.masks.apply(model, optimizer)
        self._next_update = self._first_update(self._step)

        if self._handle is not None:
            self._handle.remove()
        self._handle = optimizer.register_step_pre_hook(
            self._before_optimizer_step)
        self._optimizer = optimizer
        self._check_step_hooks()
        self._first_iter_done = False
        runner.logger.info(
            f'DynamicSparsityHook: {how}; {len(self.masks.masks)} masked '
            f'parameters')
        self._log_densities(f'optimizer step {self._step}')

    def _decide_mode(self, model):
        """``(mode in use, why)`` from the covered weights as loaded.

        Rank 0 decides and broadcasts, so all ranks agree.
        """
        zeros = zero_fraction(
            select_parameters(model, self.include, self.exclude).values())
        decision = [zeros]
        broadcast_object_list(decision)
        zeros = decision[0]
        sparse = zeros >= self.min_zero_fraction
        measured = (f'{zeros:.2%} of the covered weights are exact zeros '
                    f'(min_zero_fraction={self.min_zero_fraction})')
        if self.mode == 'fixed' and not sparse:
            raise ValueError(
                "DynamicSparsityHook(mode='fixed') keeps the zero pattern of "
                f'sparse weights, but only {measured}: there is nothing '
                'sparse to keep. Load a sparse checkpoint (init_cfg='
                "dict(type='Pretrained', ...) or load_from), or train sparse "
                f"from these weights with mode='dynamic' (or mode='auto', "
                'which decides from the loaded weights)')
        if self.mode != 'auto':
            return self.mode, f'mode={self.mode!r} ({measured})'
        if sparse:
            return 'fixed', (
                f"mode='auto' -> 'fixed': {measured}, so the loaded weights "
                'are sparse and their zero pattern is kept')
        return 'dynamic', (
            f"mode='auto' -> 'dynamic': only {measured}, so the weights are "
            f'dense and are trained with dynamic sparsity {self.sparsity}')

    def _resumed_mode(self, state: dict) -> str:
        """The mode of a resumed run: an explicit mode wins, ``'auto'``
        takes the one stored in the checkpoint."""
        return state['mode'] if self.mode == 'auto' else self.mode

    def _settings(self) -> dict:
        """The values of :data:`RESUME_SETTINGS` of this hook."""
        settings = {
            key: getattr(self, key)
            for key in RESUME_SETTINGS['dynamic']
        }
        settings.update(
            include=tuple(self.include), exclude=tuple(self.exclude))
        return settings

    def _check_resumed_settings(self, state: dict) -> None:
        """Refuse a resume whose settings differ from the saved run's."""
        stored = state['settings']
        now = self._settings()
        for key in RESUME_SETTINGS[self._resumed_mode(state)]:
            if stored[key] != now[key]:
                raise ValueError(
                    f'DynamicSparsityHook cannot resume this checkpoint: its '
                    f'run used {key}={stored[key]!r}, this config has '
                    f'{key}={now[key]!r}. A resume continues the saved run '
                    f'exactly: set {key}={stored[key]!r} again, or start a '
                    'new run from the checkpoint with load_from (without '
                    'resume), which keeps its masks and starts the schedule '
                    'afresh')

    @staticmethod
    def _loaded_as_covered(masks: dict, covered: dict) -> SparsityMasks:
        """A checkpoint's masks, if they cover exactly the parameters this
        hook covers in the model."""
        missing = [n for n in covered if n not in masks]
        extra = [n for n in masks if n not in covered]
        if missing or extra:
            raise ValueError(
                'the masks of the loaded checkpoint do not cover the '
                'parameters this DynamicSparsityHook covers in the model '
                f'(no mask for {_some(missing)}; masks of parameters not '
                f'covered: {_some(extra)}): the model (its arch, '
                'frozen_stages) or include / exclude differ from the run that '
                'saved it')
        return SparsityMasks(masks)

    def _first_update(self, step: int) -> float:
        """The first optimizer step after ``step`` at which masks update
        (``inf`` if none)."""
        if self.active_mode != 'dynamic':
            return math.inf
        nxt = (step // self.update_interval + 1) * self.update_interval
        return math.inf if self.stop_step is not None and (
            nxt > self.stop_step) else nxt

    def _log_densities(self, when: str) -> None:
        """One log line: the density of every layer group and the total."""
        counts = self.masks.group_counts(self._model)
        active = sum(a for a, _ in counts.values())
        total = sum(t for _, t in counts.values())
        groups = ', '.join(f'{g} {a / t:.4f}' for g, (a, t) in counts.items())
        self._runner.logger.info(
            f'DynamicSparsityHook density ({self.active_mode}, {when}): '
            f'{groups}; total {active / total:.4f} ({active} of {total} '
            'weights active)')

    def _snip_grad_fn(self, runner, model):
        """SNIP's batch: forward + backward on the unwrapped model.

        The batch is ``batch_size`` training samples drawn at random with the
        hook's generator and collated by the train dataloader's
        ``collate_fn``. The dataloader's sampler and iterators are not
        touched, so the training data order is the same with or without
        ``snip``.
        """
        loader = runner.train_dataloader

        def grad_fn():
            batch_size = loader.batch_size or getattr(loader.batch_sampler,
                                                      'batch_size', 1)
            indices = torch.randperm(
                len(loader.dataset), generator=self.generator)[:batch_size]
            batch = loader.collate_fn(
                [loader.dataset[int(i)] for i in indices])
            data = model.data_preprocessor(batch, True)
            losses = model(
                **data, mode='loss') if isinstance(data, dict) else model(
                    *data, mode='loss')
            loss, _ = model.parse_losses(losses)
            loss.backward()

        return grad_fn

    @staticmethod
    def _broadcast(masks: SparsityMasks, model) -> SparsityMasks:
        """Rank 0's masks on every rank (no-op without distributed)."""
        params = dict(model.named_parameters())
        synced = {}
        for name, mask in masks.masks.items():
            flat = mask.to(params[name].device, torch.uint8)
            broadcast(flat, src=0)
            synced[name] = flat.bool()
        return SparsityMasks(synced)

    def _check_step_hooks(self) -> None:
        """Refuse to go on where the optimizer no longer runs step hooks:
        the masks would silently stop applying (:func:`step_hooks_run`)."""
        if not step_hooks_run(self._optimizer):
            raise RuntimeError(
                f'DynamicSparsityHook masks the gradients in a step hook of '
                f'{type(self._optimizer).__name__}, but this torch '
                f'({torch.__version__}) no longer runs optimizer step hooks '
                'in this process: its Dynamo (torch.compile, compile=True in '
                'the config, torch._dynamo.explain) disabled them for every '
                'optimizer class. Train without compile on this torch, or '
                'with a torch whose Dynamo keeps them (2.14 is tested).')

    # ------------------------------------------------------------ every step
    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        """After the first iteration (when a compiled ``train_step`` has
        run Dynamo for the first time), check the step hooks again."""
        if not self._first_iter_done:
            self._check_step_hooks()
            self._first_iter_done = True

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Optimizer step pre-hook: count, maybe update, mask the gradients.

        No host synchronisation unless an update may be due. A step that a
        fused optimizer skips (``found_inf``) is counted and then subtracted.
        """
        self._step += 1
        found_inf = getattr(optimizer, 'found_inf', None)
        if isinstance(found_inf, Tensor):
            flag = found_inf.detach().float().sum()
            self._skipped = flag if self._skipped is None else (self._skipped +
                                                                flag)
        # `_step` >= the real step count, so below `_next_update` no update
        # is due; otherwise `step` makes the count exact (one sync).
        if self._step >= self._next_update and self.step >= self._next_update:
            self._update(optimizer)
        self.masks.mask_grads(self._model)

    def _update(self, optimizer) -> None:
        """Prune and regrow at optimizer step ``self._step``; log it."""
        self._next_update = self._first_update(self._step)
        rate = cosine_prune_rate(self._step, self._total_steps,
                                 self.prune_rate, self.min_prune_rate)
        moved = self.masks.update(self._model, rate, self.growth,
                                  self.generator, optimizer)
        density = self.masks.density
        hub = self._runner.message_hub
        hub.update_scalar('train/sparsity_density', density)
        hub.update_scalar('train/prune_rate', rate)
        self._runner.logger.info(
            f'DynamicSparsityHook update at optimizer step {self._step}, '
            f'prune rate {rate:.4f}: {moved} weights pruned and regrown '
            f'({self.growth}), density {density:.4f}')
        self._log_densities(f'optimizer step {self._step}')

    def after_train(self, runner) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    # ----------------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.masks is not None:
            checkpoint[CHECKPOINT_KEY] = dict(
                masks=self.masks.state_dict(),
                step=self.step,
                generator=self.generator.get_state(),
                mode=self.active_mode,
                settings=self._settings())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            if runner._resume:
                runner.logger.warning(
                    'DynamicSparsityHook: resuming from a checkpoint without '
                    f'{CHECKPOINT_KEY!r} state; masks are initialised afresh')
        elif runner._resume:
            self._check_resumed_settings(state)
            self._loaded = state
        else:
            self._loaded_masks = state['masks']
