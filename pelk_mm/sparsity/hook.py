"""mmengine hook for SLaK-style dynamic sparsity, exact under AMP, gradient
accumulation, DDP and resume."""
import math
from typing import Optional, Sequence

import torch
from mmengine.dist import broadcast, broadcast_object_list
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from torch import Tensor

from .masks import (DEFAULT_INCLUDE, SparsityMasks, check_growth, check_init,
                    check_sparsity, select_parameters, unwrap_model)

MODES = ('auto', 'dynamic', 'fixed')
CHECKPOINT_KEY = 'sparsity'


def cosine_prune_rate(step: int, total_steps: int, initial: float,
                      final: float) -> float:
    """SLaK's prune-rate schedule (``CosineDecay``).

    ``final + (initial - final) * (1 + cos(pi * t / T)) / 2`` with
    ``t = min(step, T)`` optimizer steps and ``T = total_steps``.
    """
    t = min(step, total_steps) / total_steps
    return final + 0.5 * (initial - final) * (1.0 + math.cos(math.pi * t))


def zero_fraction(params) -> float:
    """Fraction of exact zeros over all entries of ``params`` (0 if none)."""
    params = list(params)
    total = sum(p.numel() for p in params)
    zeros = sum(p.numel() - int(torch.count_nonzero(p)) for p in params)
    return zeros / total if total else 0.0


def step_hooks_run(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``type(optimizer).step`` still runs its step pre-hooks.

    torch 2.1's Dynamo (``torch.compile``, ``torch._dynamo.explain``)
    unwraps the hook-calling ``step`` of every optimizer class the first time
    it runs in a process, so registered step hooks silently stop firing
    there; torch 2.14 leaves them alone. Probed on a throwaway optimizer of
    the same class and settings, one step on a zero gradient. An optimizer
    whose constructor does not take its own ``defaults`` is not probed
    (True).
    """
    param = torch.zeros(1, requires_grad=True)
    param.grad = torch.zeros(1)
    try:
        probe = type(optimizer)([param], **optimizer.defaults)
    except (TypeError, ValueError, RuntimeError):
        return True
    fired = []
    probe.register_step_pre_hook(lambda *args: fired.append(True))
    probe.step()
    return bool(fired)


@HOOKS.register_module()
class DynamicSparsityHook(Hook):
    """Train with sparse weights: SLaK's dynamic sparsity, or fixed masks.

    ``dynamic`` (pre-training from scratch): masks are initialised before the
    first iteration (:meth:`SparsityMasks.init`), then every
    ``update_interval`` optimizer steps a fraction of each layer's active
    weights, following a cosine decay from ``prune_rate`` to
    ``min_prune_rate`` over ``decay_steps``, is pruned by magnitude and as many
    positions are regrown (:meth:`SparsityMasks.update`). ``fixed``
    (fine-tuning a sparse pretrained model): mask = weight != 0 of the loaded
    weights, kept unchanged; covered weights with fewer than
    ``min_zero_fraction`` exact zeros are an error (nothing sparse to keep).
    ``auto`` (the downstream configs) decides from the weights as loaded
    (``init_cfg`` / ``Pretrained`` and ``load_from`` are applied before
    ``before_train``): ``fixed`` when at least ``min_zero_fraction`` of the
    covered weights are exact zeros (a sparse checkpoint: keep its pattern),
    else ``dynamic`` at ``sparsity`` (training from scratch). The decision,
    the measured zero fraction and the reason are logged, and the decision
    is stored in the checkpoint, so ``--resume`` continues in the same mode
    (the weights of a dynamic run are sparse by then).

    In all modes pruned weights and their optimizer moments are zero at the
    start (:meth:`SparsityMasks.apply`) and stay exactly zero: right before
    every real optimizer step (a step pre-hook on
    ``runner.optim_wrapper.optimizer``) the gradients of the pruned weights
    are zeroed (:meth:`SparsityMasks.mask_grads`), and with zero weight,
    gradient and moments the step leaves an entry at zero in every
    element-wise optimizer (SGD with momentum, Adam, AdamW, ..., weight
    decay included). The hook counts optimizer steps, not iterations, so
    gradient accumulation (``accumulative_counts``) and loss-scaler skips
    (``AmpOptimWrapper``: ``GradScaler`` does not call ``optimizer.step()``
    on inf / NaN gradients, or, for fused optimizers, calls it with
    ``optimizer.found_inf`` set) are followed exactly. Updates run in the
    same pre-hook, on the gradients of that step before masking: the newly
    pruned weights and their moments are zeroed, and a regrown weight starts
    from zero weight AND zero moments, like a newly added parameter (RigL
    does the same), and takes its first step at once; Adam's per-tensor bias
    correction then makes that update about ``(1 - beta1) / sqrt(1 -
    beta2)`` times ``lr`` (3.2 lr with the defaults). The per-step work is
    one multiplication of each masked gradient by its 0 / 1 mask and no host
    synchronisation: a fused optimizer's ``found_inf`` is summed on the
    device and read only when an update may be due.

    The density of every layer group (:func:`layer_group`: stem, downsample
    layers, peripheral and pointwise weights per stage, head) is logged at
    the start and after every update.

    Parameters are found by name in ``model.named_parameters()`` after
    unwrapping DDP / mmengine wrappers (:func:`select_parameters`): for an mm
    model the defaults cover ``backbone.*`` and a classifier's ``head.*``; for
    a bare backbone pass ``include=('',)``.

    DDP: the mode decision, the initial masks and the generator seed are
    broadcast from rank 0 once, in ``before_train``. Updates then use only
    the synchronised weights and gradients and a generator in the same state
    on every rank, so the masks stay identical without any further
    communication.

    Checkpoints: ``before_save_checkpoint`` stores
    ``checkpoint['sparsity'] = dict(masks=..., step=..., generator=...,
    mode=...)`` (bool masks on CPU, optimizer steps counted, random-growth
    generator state, the mode in use). On ``resume`` all of it is restored
    (``mode='auto'`` takes the stored mode; an explicit ``'dynamic'`` or
    ``'fixed'`` wins), so masks and the next update are identical to an
    uninterrupted run. On ``load_from`` (not resume), a ``dynamic`` run keeps
    the checkpoint's masks (step counter and generator start afresh);
    ``fixed`` always derives its masks from the loaded weights.

    Args:
        mode: ``'auto'``, ``'dynamic'`` or ``'fixed'``.
        sparsity: Fraction of the covered weights pruned (``dynamic``).
        init: Mask initialisation (``dynamic``): ``'snip'`` (SLaK's default;
            one batch of random training samples, see :meth:`_snip_grad_fn`),
            ``'ERK'``, ``'uniform'`` or ``'from_weights'``.
        include: Parameter-name patterns to mask (``re.match``).
        exclude: Parameter-name patterns to leave dense.
        update_interval: Optimizer steps between prune-and-regrow updates
            (SLaK: 100; 2000 for PeLK-T).
        prune_rate: Initial prune rate (SLaK: 0.3; 0.5 for PeLK-T).
        min_prune_rate: Prune rate at the end of the cosine decay.
        decay_steps: Optimizer steps of the decay; default: the whole run,
            ``ceil(max_iters / accumulative_counts)``.
        stop_step: Last optimizer step at which masks are updated; ``None``:
            update until the end. Masks are still applied afterwards.
        growth: ``'random'`` or ``'gradient'``.
        seed: Seed of the growth / init generator; default: ``runner.seed``.
        erk_power_scale: Exponent of the ERK raw score.
        min_zero_fraction: Fraction of exact zeros over the covered weights
            from which they count as sparse (``auto`` picks ``fixed``;
            ``fixed`` needs it). Default 0.1: dense weights hold almost no
            exact zeros (a float init draws one in ~10^7), every sparse
            checkpoint of this project 40 %.
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
        self._runner = runner
        self._model = model
        self._total_steps = self.decay_steps or math.ceil(
            runner.max_iters /
            getattr(runner.optim_wrapper, '_accumulative_counts', 1))
        self._skipped = None

        if self._loaded is not None:
            self.active_mode = self._resumed_mode(self._loaded)
            self.masks = SparsityMasks(self._loaded['masks'])
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
                self.masks = SparsityMasks(self._loaded_masks)
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
        if self.mode != 'auto':
            return self.mode
        if state.get('mode') not in ('dynamic', 'fixed'):
            raise ValueError(
                "DynamicSparsityHook(mode='auto') cannot resume from this "
                f"checkpoint: its {CHECKPOINT_KEY!r} state does not record "
                "the mode (written before mode='auto' existed); set "
                "mode='dynamic' or mode='fixed' explicitly")
        return state['mode']

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
                mode=self.active_mode)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            if runner._resume:
                runner.logger.warning(
                    'DynamicSparsityHook: resuming from a checkpoint without '
                    f'{CHECKPOINT_KEY!r} state; masks are initialised afresh')
        elif runner._resume:
            self._loaded = state
        else:
            self._loaded_masks = state['masks']
