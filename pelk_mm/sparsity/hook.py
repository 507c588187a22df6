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

from .masks import (DEFAULT_INCLUDE, GROWTH_MODES, INIT_MODES, SparsityMasks,
                    unwrap_model)

MODES = ('dynamic', 'fixed')
CHECKPOINT_KEY = 'sparsity'


def cosine_prune_rate(step: int, total_steps: int, initial: float,
                      final: float) -> float:
    """SLaK's prune-rate schedule (``CosineDecay``).

    ``final + (initial - final) * (1 + cos(pi * t / T)) / 2`` with
    ``t = min(step, T)`` optimizer steps and ``T = total_steps``.
    """
    t = min(step, total_steps) / total_steps
    return final + 0.5 * (initial - final) * (1.0 + math.cos(math.pi * t))


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
    weights, kept unchanged.

    In both modes the masks are applied right after every real optimizer
    step, through a step post-hook on ``runner.optim_wrapper.optimizer``: the
    hook counts optimizer steps, not iterations, so gradient accumulation
    (``accumulative_counts``) and loss-scaler skips (``AmpOptimWrapper``:
    ``GradScaler`` does not call ``optimizer.step()`` on inf / NaN gradients,
    or, for fused optimizers, calls it with ``optimizer.found_inf`` set, which
    the hook reads) are followed exactly, and no pruned weight is ever
    non-zero at the end of an iteration. The moments of pruned positions
    (Adam / AdamW ``exp_avg`` / ``exp_avg_sq``, SGD ``momentum_buffer``) are
    zeroed after every step as well, so a regrown weight starts from zero
    weight AND zero moments, like a newly added parameter (RigL does the
    same); Adam's per-tensor bias correction then makes its first update about
    ``(1 - beta1) / sqrt(1 - beta2)`` times ``lr`` (3.2 lr with the defaults).

    Parameters are found by name in ``model.named_parameters()`` after
    unwrapping DDP / mmengine wrappers (:func:`select_parameters`): for an mm
    model the defaults cover ``backbone.*`` and a classifier's ``head.*``; for
    a bare backbone pass ``include=('',)``.

    DDP: the initial masks and the generator seed are broadcast from rank 0
    once, in ``before_train``. Updates then use only the synchronised weights
    and gradients and a generator in the same state on every rank, so the
    masks stay identical without any further communication.

    Checkpoints: ``before_save_checkpoint`` stores
    ``checkpoint['sparsity'] = dict(masks=..., step=..., generator=...)``
    (bool masks on CPU, optimizer steps counted, random-growth generator
    state). On ``resume`` all three are restored, so masks and the next update
    are identical to an uninterrupted run. On ``load_from`` (not resume), in
    ``dynamic`` mode, the checkpoint's masks are kept (step counter and
    generator start afresh); ``fixed`` mode always derives its masks from the
    loaded weights.

    Args:
        mode: ``'dynamic'`` or ``'fixed'``.
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
                 erk_power_scale: float = 1.0):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        if init not in INIT_MODES:
            raise ValueError(f'init must be one of {INIT_MODES}, got {init!r}')
        if growth not in GROWTH_MODES:
            raise ValueError(
                f'growth must be one of {GROWTH_MODES}, got {growth!r}')
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f'sparsity must be in [0, 1), got {sparsity}')
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

        self.masks: Optional[SparsityMasks] = None
        self.step = 0  # real optimizer steps taken so far
        self.generator = torch.Generator()
        self._loaded: Optional[dict] = None  # checkpoint state, resume only
        self._loaded_masks: Optional[dict] = None  # load_from's masks
        self._handle = None
        self._runner = None
        self._total_steps = 1

    # ------------------------------------------------------------------ setup
    def before_train(self, runner) -> None:
        """Build (or restore) the masks, apply them, hook the optimizer."""
        if isinstance(runner.optim_wrapper, OptimWrapperDict):
            raise ValueError(
                'DynamicSparsityHook needs a single OptimWrapper, '
                'got an OptimWrapperDict')
        model = unwrap_model(runner.model)
        optimizer = runner.optim_wrapper.optimizer
        self._runner = runner
        self._total_steps = self.decay_steps or math.ceil(
            runner.max_iters /
            getattr(runner.optim_wrapper, '_accumulative_counts', 1))

        if self._loaded is not None:
            self.masks = SparsityMasks(self._loaded['masks'])
            self.step = int(self._loaded['step'])
            self.generator.set_state(self._loaded['generator'])
            how = f'resumed at optimizer step {self.step}'
        else:
            seed = [self.seed if self.seed is not None else runner.seed]
            broadcast_object_list(seed)
            self.generator.manual_seed(int(seed[0]))
            self.step = 0
            if self.mode == 'dynamic' and self._loaded_masks is not None:
                self.masks = SparsityMasks(self._loaded_masks)
                how = 'masks of the loaded checkpoint'
            else:
                init = 'from_weights' if self.mode == 'fixed' else self.init
                self.masks = self._broadcast(
                    SparsityMasks.init(model,
                                       sparsity=self.sparsity,
                                       init=init,
                                       include=self.include,
                                       exclude=self.exclude,
                                       generator=self.generator,
                                       grad_fn=self._snip_grad_fn(
                                           runner, model),
                                       erk_power_scale=self.erk_power_scale),
                    model)
                how = f'init={init!r}'
        self._loaded = self._loaded_masks = None
        self.masks.apply(model, optimizer)

        if self._handle is not None:
            self._handle.remove()
        self._handle = optimizer.register_step_post_hook(
            self._after_optimizer_step)
        runner.logger.info(
            f'DynamicSparsityHook ({self.mode}, {how}): '
            f'{len(self.masks.masks)} masked parameters, density '
            f'{self.masks.density:.4f}')

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
            indices = torch.randperm(len(loader.dataset),
                                     generator=self.generator)[:batch_size]
            batch = loader.collate_fn(
                [loader.dataset[int(i)] for i in indices])
            data = model.data_preprocessor(batch, True)
            losses = model(**data, mode='loss') if isinstance(
                data, dict) else model(*data, mode='loss')
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

    # ------------------------------------------------------------ every step
    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Optimizer step post-hook: count, maybe update, apply masks."""
        found_inf = getattr(optimizer, 'found_inf', None)
        if isinstance(found_inf, Tensor) and found_inf.item():
            return  # fused optimizer: GradScaler skipped this step
        self.step += 1
        model = unwrap_model(self._runner.model)
        self.masks.apply(model, optimizer)
        if (self.mode == 'dynamic' and self.step % self.update_interval == 0
                and (self.stop_step is None or self.step <= self.stop_step)):
            rate = cosine_prune_rate(self.step, self._total_steps,
                                     self.prune_rate, self.min_prune_rate)
            moved = self.masks.update(model, rate, self.growth, self.generator,
                                      optimizer)
            density = self.masks.density
            hub = self._runner.message_hub
            hub.update_scalar('train/sparsity_density', density)
            hub.update_scalar('train/prune_rate', rate)
            self._runner.logger.info(
                f'DynamicSparsityHook: optimizer step {self.step}, prune rate '
                f'{rate:.4f}: {moved} weights pruned and regrown '
                f'({self.growth}), density {density:.4f}')

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
                generator=self.generator.get_state())

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
