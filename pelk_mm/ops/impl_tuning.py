"""How ``impl='auto'`` picks an implementation: cost model or measure once.

The exact implementations (``dense``, ``fft``, ``blocksum``, and on CUDA
where Triton imports the fused ``triton`` kernels, :func:`candidates`) give
the same result up to float round-off, so the choice among them only
changes speed. The cost model never picks ``triton``; CPUs never time it.
:func:`choose_impl` decides, in this order:

1. **Deterministic cost model** (:func:`pelk_mm.ops.impl_selection.
   select_impl`, a function of the shape alone) when the tuning mode is
   ``'model'`` (:func:`set_tuning_mode`, or ``PELK_MM_IMPL_TUNING=model``)
   or when ``torch.use_deterministic_algorithms(True)`` is on.
2. **Cost model** on device types with calibrated coefficients
   (:data:`~pelk_mm.ops.impl_selection.COST_COEFFICIENTS`, today ``'cpu'``),
   unless the mode is ``'measure'``.
3. **Measure once** everywhere else (``'cuda'``, ``'mps'``, ``'xpu'``, ...,
   and every device in mode ``'measure'``): on the first call with a new
   :class:`Signature` the candidates are timed on random inputs of that
   signature (synchronised, after warm-up calls, the fastest of a few
   repetitions each), the fastest is kept, logged once with the times
   (logger ``pelk_mm.ops.impl_tuning``, level INFO), and reused for every
   later call with that signature: no timing after the first call.

Choices can be written to and read from a JSON file
(:func:`save_choices`, :func:`load_choices`); with the environment variable
``PELK_MM_IMPL_CACHE=/path/choices.json`` the file is read on the first
measured call and rewritten (merged, atomically) after every new choice, so
the ranks of a job and later runs reuse it. Keys name the device model
(e.g. ``NVIDIA H200``), not its index, and a file written by another torch
version is ignored (its kernels may differ).

Distributed training: every rank decides on its own, with no collective
(ranks may see different shapes, e.g. multi-scale training, and a
broadcast at the first call would then deadlock). Ranks may thus run
different implementations of the same layer; their outputs differ only by
round-off, and DDP's all-reduce of the gradients keeps the parameters
identical on every rank. For identical choices on every rank, share a
choices file (run once, then point ``PELK_MM_IMPL_CACHE`` at it) or use the
deterministic mode.

``torch.compile``: :func:`measured_choice` is marked as
``torch.compiler.assume_constant_result``, a function of the (Python-level)
signature, so Dynamo calls it while tracing (timing real tensors outside
the graph if the signature is new) and bakes the name into the graph as a
constant: no graph break, no timing in the compiled step.
"""
import contextlib
import functools
import json
import logging
import os
import tempfile
import time
from typing import (Callable, Dict, Iterator, NamedTuple, Optional, Sequence,
                    Tuple)

import torch
from torch import Tensor

from .autocast_policy import autocast_dtype
from .blocksum_conv import blocksum_peripheral_conv
from .dense_conv import dense_peripheral_conv
from .fft_conv import fft_peripheral_conv
from .impl_selection import COST_COEFFICIENTS, select_impl
from .triton_conv import triton_installed, triton_peripheral_conv

logger = logging.getLogger(__name__)

#: Where :func:`choose_impl` may measure: ``'auto'`` (device types without
#: calibrated coefficients), ``'measure'`` (every device type) or ``'model'``
#: (nowhere: the deterministic cost model everywhere).
TUNING_MODES = ('auto', 'measure', 'model')
MODE_ENV = 'PELK_MM_IMPL_TUNING'
CACHE_ENV = 'PELK_MM_IMPL_CACHE'

#: The exact implementations that ``'auto'`` chooses among on every device.
CANDIDATES: Dict[str, Callable[[Tensor, Tensor, Sequence[int]], Tensor]] = {
    'dense': dense_peripheral_conv,
    'fft': fft_peripheral_conv,
    'blocksum': blocksum_peripheral_conv,
}

#: Exact implementations that ``'auto'`` also times on CUDA devices where
#: Triton imports (:func:`candidates`); never on other devices.
CUDA_CANDIDATES: Dict[str, Callable[[Tensor, Tensor, Sequence[int]],
                                    Tensor]] = {
                                        'triton': triton_peripheral_conv,
                                    }


@functools.lru_cache(maxsize=None)
def triton_imports() -> bool:
    """Whether Triton >= 3.0 is installed and imports (imported here, at
    the first measurement on CUDA, never with ``pelk_mm.ops``)."""
    if not triton_installed():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def candidates(
    device: torch.device
) -> Dict[str, Callable[[Tensor, Tensor, Sequence[int]], Tensor]]:
    """The implementations ``'auto'`` times on ``device``:
    :data:`CANDIDATES`, plus :data:`CUDA_CANDIDATES` on CUDA where Triton
    imports."""
    if device.type == 'cuda' and triton_imports():
        return {**CANDIDATES, **CUDA_CANDIDATES}
    return CANDIDATES


_FILE_VERSION = 1


def check_tuning_mode(mode: str, name: str = '`mode`') -> str:
    """Validate a tuning mode (one of :data:`TUNING_MODES`)."""
    if mode not in TUNING_MODES:
        raise ValueError(f'{name} must be one of {TUNING_MODES}, got '
                         f'{mode!r}')
    return mode


_mode = check_tuning_mode(os.environ.get(MODE_ENV, 'auto'), MODE_ENV)


def set_tuning_mode(mode: str) -> str:
    """Set the tuning mode (:data:`TUNING_MODES`); returns the previous."""
    global _mode
    previous, _mode = _mode, check_tuning_mode(mode)
    return previous


class Signature(NamedTuple):
    """Everything a measured choice depends on (Python values only)."""
    device: torch.device
    shape: Tuple[int, int, int, int]  # (N, C, H, W)
    grid: Tuple[int, ...]
    dtype: torch.dtype  # of the input
    weight_dtype: torch.dtype
    autocast_dtype: Optional[torch.dtype]  # None: autocast off
    backward: bool  # a backward pass will follow (grad mode and a grad)
    channels_last: bool

    def key(self) -> str:
        """The signature as a JSON key, naming the device model."""
        shape = 'x'.join(map(str, self.shape))
        autocast = ('off' if self.autocast_dtype is None else _dtype_name(
            self.autocast_dtype))
        return (f'{device_name(self.device)}|{shape}|'
                f'grid={",".join(map(str, self.grid))}|'
                f'{_dtype_name(self.dtype)}|'
                f'weight={_dtype_name(self.weight_dtype)}|'
                f'autocast={autocast}|'
                f'{"fwd+bwd" if self.backward else "fwd"}|'
                f'{"channels_last" if self.channels_last else "nchw"}')


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def device_name(device: torch.device) -> str:
    """The device model, e.g. ``'NVIDIA H200'``; the type if unnamed."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return device.type


def signature(x: Tensor, weight: Tensor, grid: Sequence[int]) -> Signature:
    """The :class:`Signature` of a call ``fn(x, weight, grid)``."""
    channels_last = (
        x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous())
    return Signature(
        device=x.device,
        shape=tuple(int(size) for size in x.shape),
        grid=tuple(grid),
        dtype=x.dtype,
        weight_dtype=weight.dtype,
        autocast_dtype=autocast_dtype(x.device.type),
        backward=torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad),
        channels_last=channels_last)


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


class ImplTuner:
    """Times the candidates once per signature and keeps the fastest.

    Args:
        clock (callable): Seconds, monotonic; ``time.perf_counter`` by
            default (tests inject a fake one).
        warmup (int): Untimed calls per candidate first (cuFFT plans, cuDNN
            algorithm search, caches). Defaults to 2.
        repeats (int): Timed calls per candidate; its time is the fastest.
            Defaults to 3.
        cache_file (str, optional): JSON file read on the first measured
            call and rewritten after every new choice. Defaults to None.
    """

    def __init__(self,
                 clock: Callable[[], float] = time.perf_counter,
                 warmup: int = 2,
                 repeats: int = 3,
                 cache_file: Optional[str] = None):
        self.clock = clock
        self.warmup = warmup
        self.repeats = repeats
        self.cache_file = cache_file
        self.choices: Dict[str, dict] = {}  # key -> {'impl', 'ms'}
        self.measured = 0  # signatures timed by this tuner
        self._file_read = False
        self._kept: Dict[Signature, str] = {}  # the per-call fast path

    def choice(self, sig: Signature) -> str:
        """The kept choice for ``sig``, measured now if it is new."""
        kept = self._kept.get(sig)
        if kept is not None:
            return kept
        if not self._file_read and self.cache_file is not None:
            self._file_read = True
            if os.path.exists(self.cache_file):
                self.load(self.cache_file)
        key = sig.key()
        if key not in self.choices:
            times = self.measure(sig)
            best = min(times, key=times.get)
            self.choices[key] = dict(impl=best, ms=times)
            logger.info('impl=auto picked %r for %s (ms: %s)', best, key,
                        ', '.join(f'{k} {v:.3g}' for k, v in times.items()))
            if self.cache_file is not None:
                self.save(self.cache_file)
        self._kept[sig] = self.choices[key]['impl']
        return self._kept[sig]

    def measure(self, sig: Signature) -> Dict[str, float]:
        """Milliseconds of one call of each candidate on random inputs of
        ``sig`` (drawn from a private generator: the global RNG is left
        alone); infinite for a candidate that runs out of device memory, and
        for a :data:`CUDA_CANDIDATES` kernel that raises (logged as a
        warning)."""
        self.measured += 1
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(sig.shape, generator=gen).to(sig.device, sig.dtype)
        if sig.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        bands = len(sig.grid)
        weight = (torch.randn((sig.shape[1], 1, bands, bands), generator=gen) /
                  sum(sig.grid)).to(sig.device, sig.weight_dtype)
        x.requires_grad_(sig.backward)
        weight.requires_grad_(sig.backward)
        times = {}
        for name, fn in candidates(sig.device).items():
            try:
                times[name] = self._time(fn, x, weight, sig) * 1e3
            except torch.cuda.OutOfMemoryError:  # this one cannot run here
                torch.cuda.empty_cache()
                times[name] = float('inf')
            except Exception as error:  # noqa: B902
                if name not in CUDA_CANDIDATES:
                    raise
                # a Triton kernel that fails to compile or launch on this
                # GPU: 'auto' keeps the torch implementations, and says so
                logger.warning(
                    'impl=auto: %r failed on %s and is left out: '
                    '%r', name, sig.key(), error)
                times[name] = float('inf')
        return times

    def _time(self, fn, x: Tensor, weight: Tensor, sig: Signature) -> float:
        """Fastest of ``repeats`` synchronised calls, after ``warmup``."""

        autocast = (
            contextlib.nullcontext() if sig.autocast_dtype is None else
            torch.autocast(sig.device.type, dtype=sig.autocast_dtype))

        def call():
            with autocast, torch.set_grad_enabled(sig.backward):
                out = fn(x, weight, sig.grid)
                if sig.backward:
                    out.backward(torch.ones_like(out))

        for _ in range(self.warmup):
            call()
        best = float('inf')
        for _ in range(self.repeats):
            _synchronize(sig.device)
            start = self.clock()
            call()
            _synchronize(sig.device)
            best = min(best, self.clock() - start)
        return best

    def save(self, path: str) -> None:
        """Write the choices to ``path`` (JSON), merged with the choices
        already there and replaced atomically (ranks may share a file)."""
        choices = dict(self.choices)
        if os.path.exists(path):
            choices = {**_read(path), **choices}
        folder = os.path.dirname(os.path.abspath(path))
        with tempfile.NamedTemporaryFile(
                'w', dir=folder, suffix='.tmp', delete=False) as tmp:
            json.dump(
                dict(
                    version=_FILE_VERSION,
                    torch=torch.__version__,
                    choices=choices),
                tmp,
                indent=1,
                sort_keys=True)
        os.replace(tmp.name, path)

    def load(self, path: str) -> int:
        """Add the choices of ``path`` (from :meth:`save`); returns their
        number (0 for a file of another torch version, with a warning)."""
        choices = _read(path)
        known = {**CANDIDATES, **CUDA_CANDIDATES}
        for entry in choices.values():
            if entry.get('impl') not in known:
                raise ValueError(f'{path}: every choice must name one of '
                                 f'{sorted(known)}, got {entry!r}')
        self.choices.update(choices)
        self._kept.clear()  # the file's choices win
        return len(choices)


def _read(path: str) -> Dict[str, dict]:
    with open(path) as file:
        content = json.load(file)
    if content.get('torch') != torch.__version__:
        logger.warning(
            '%s holds impl choices timed with torch %s, not %s: '
            'ignored', path, content.get('torch'), torch.__version__)
        return {}
    return content['choices']


_tuner = ImplTuner(cache_file=os.environ.get(CACHE_ENV))


@contextlib.contextmanager
def using_tuner(tuner: ImplTuner) -> Iterator[ImplTuner]:
    """Make ``tuner`` the one :func:`choose_impl` measures with."""
    global _tuner
    previous, _tuner = _tuner, tuner
    try:
        yield tuner
    finally:
        _tuner = previous


def save_choices(path: str) -> None:
    """Write the measured choices of this process to ``path`` (JSON)."""
    _tuner.save(path)


def load_choices(path: str) -> int:
    """Reuse the choices of ``path``; returns how many it held."""
    return _tuner.load(path)


def measured_choice(*fields) -> str:
    """The measured choice for ``Signature(*fields)`` (a constant under
    torch.compile, which passes the fields as plain Python values)."""
    return _tuner.choice(Signature(*fields))


# What ``torch.compiler.assume_constant_result`` does (torch 2.0 to 2.14),
# without importing torch._dynamo (1.3 s) with pelk_mm.ops;
# tests/test_compile.py checks that the decorator still sets this attribute.
measured_choice._dynamo_marked_constant = True


def choose_impl(x: Tensor, weight: Tensor, grid: Sequence[int]) -> str:
    """Name of the implementation ``impl='auto'`` runs for this call.

    Args:
        x (Tensor): Input ``(N, C, H, W)``.
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid.

    Returns:
        str: ``'dense'``, ``'fft'``, ``'blocksum'`` or (measured on CUDA
        only) ``'triton'``.
    """
    if (_mode == 'model' or torch.are_deterministic_algorithms_enabled()
            or _mode == 'auto' and x.device.type in COST_COEFFICIENTS):
        return select_impl(x, weight, grid)
    return measured_choice(*signature(x, weight, grid))
