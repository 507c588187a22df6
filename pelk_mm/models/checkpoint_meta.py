"""Architecture records in checkpoints, and strict loading into PeLK.

Every state dict of a model that holds a :class:`~pelk_mm.PeLK` carries the
backbone's :meth:`~pelk_mm.PeLK.arch_record` in the per-module metadata that
PyTorch keeps next to the tensors, ``state_dict._metadata[<module path>]
['pelk_arch']`` (``'backbone'`` in a classifier / segmentor / detector,
``''`` for a bare backbone). A state-dict hook writes it, so the checkpoints of
every runner and tool have it (``torch.save`` keeps ``_metadata``, and
``torch.load(weights_only=True)`` restores it). Tools that write checkpoints
also mirror it into ``checkpoint['meta']['pelk_arch'] = {<module path>:
record}`` with :func:`add_arch_meta`, where people and other tools look.

Loading into PeLK (``init_cfg=dict(type='Pretrained', ...)`` with or without
``prefix``, ``load_from``, ``--resume``, ``tools/test.py CONFIG CKPT``) goes
through :meth:`PeLK._load_from_state_dict`, which calls
:func:`check_state_dict` and raises :class:`PeLKCheckpointMismatch` before any
weight is copied when a backbone tensor has another shape, a backbone key is
missing, the checkpoint has blocks / stages / positional embeddings the
model does not have, or its record names another arch even though every shape
fits (the compact weights of K = 21 and K = 31 with a 5x5 centre are both
11 x 11; without a record, such checkpoints cannot be told apart). The only
keys allowed to be missing are the output norms ``norm{i}``, which depend on
``out_indices`` rather than on the arch (a classifier has ``norm3`` only; a
downstream backbone adds ``norm0``-``norm2`` with their default
initialisation). Keys outside the backbone (heads) are not
the backbone's business.
"""
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch.nn as nn
from mmengine.model import is_model_wrapper

from .arch import arch_name

#: Key of the architecture record in the state dict's per-module metadata and
#: in ``checkpoint['meta']``.
ARCH_META_KEY = 'pelk_arch'

# The parts whose presence depends on the arch (depths, number of stages,
# pos_embed, deploy), as the backbone's ``locate`` names them.
_UNIT_PARTS = ('stem', 'downsample', 'block', 'pos_embed')
# fields of a record that must agree: the compact weights of one grid have
# the shapes of those of another (e.g. K = 21 and K = 31, both with k' = 11)
_ARCH_FIELDS = ('depths', 'channels', 'grids', 'conv_channels', 'in_channels',
                'stem_patch_size', 'pos_embed', 'deploy', 'deploy_mode')
# fields shown when a checkpoint's record is summarised, in this order
_SUMMARY_FIELDS = ('depths', 'channels', 'kernel_sizes', 'grids',
                   'conv_channels', 'peripheral_weight_sizes', 'pos_embed',
                   'pos_embed_mode', 'deploy', 'deploy_mode', 'in_channels',
                   'stem_patch_size')


class PeLKCheckpointMismatch(ValueError):
    """A checkpoint does not fit the PeLK it is loaded into."""


def save_arch_record(module: nn.Module, state_dict: dict, prefix: str,
                     local_metadata: dict) -> None:
    """State-dict hook of :class:`PeLK`: store its arch record.

    Registered with ``module._register_state_dict_hook``; PyTorch's
    ``state_dict()`` and mmengine's ``get_state_dict`` both call it with the
    module's own metadata entry.
    """
    local_metadata[ARCH_META_KEY] = module.arch_record()


class ArchRecordMixin:
    """Checkpoint policy of a backbone with an ``arch_record()`` method.

    Part of :class:`~pelk_mm.PeLK`: every state dict records the arch (call
    :meth:`_record_arch` once in ``__init__``) and every load refuses
    weights that do not fit, before any is copied (:func:`check_state_dict`
    against the record the weights came with).
    """

    def _record_arch(self) -> None:
        """Register :func:`save_arch_record` as a state-dict hook."""
        self._register_state_dict_hook(save_arch_record)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Refuse weights that do not fit, before any is copied.

        Every loader (torch's and mmengine's ``load_state_dict``, hence
        ``Pretrained``, ``load_from``, resume and ``tools/test.py``) calls
        this first for the backbone; see :func:`check_state_dict`.
        """
        check_state_dict(
            self, {
                k[len(prefix):]: v
                for k, v in state_dict.items() if k.startswith(prefix)
            }, local_metadata.get(ARCH_META_KEY), prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def arch_records(model: nn.Module) -> Dict[str, dict]:
    """``{module path: arch record}`` of every module of ``model`` with an
    ``arch_record()`` method (every :class:`~pelk_mm.PeLK`)."""
    return {
        name: module.arch_record()
        for name, module in _unwrap(model).named_modules()
        if callable(getattr(module, 'arch_record', None))
    }


def add_arch_meta(checkpoint: dict,
                  model: nn.Module,
                  prefix: str = '') -> dict:
    """Record the arch of every PeLK in ``model`` in ``checkpoint['meta']``.

    Sets ``checkpoint['meta']['pelk_arch'] = {module path: record}`` (e.g.
    ``{'backbone': {...}}``), creating ``meta`` if needed. Call it on every
    checkpoint a tool writes, with the model whose weights it holds (after
    ``switch_to_deploy()`` for a deployed one). The state dict itself
    carries the same record in its metadata already.

    Args:
        checkpoint (dict): The checkpoint to write; changed in place.
        model (nn.Module): The model (model wrappers are unwrapped).
        prefix (str): Where ``model``'s keys sit in the checkpoint's state
            dict, e.g. ``'backbone.'`` for a bare PeLK saved as a backbone.
            Defaults to ''.

    Returns:
        dict: ``checkpoint``.
    """
    records = {
        '.'.join(p for p in (prefix.rstrip('.'), name) if p): record
        for name, record in arch_records(model).items()
    }
    if records:
        checkpoint.setdefault('meta', {})[ARCH_META_KEY] = records
    return checkpoint


def find_arch_record(checkpoint: Mapping, module_path: str) -> Optional[dict]:
    """The arch record of the PeLK saved at ``module_path`` in a checkpoint.

    Looks in the state dict's metadata first, then in ``meta['pelk_arch']``.

    Args:
        checkpoint (Mapping): A loaded checkpoint (with ``state_dict``) or a
            bare state dict.
        module_path (str): E.g. ``'backbone'``, or ``''`` for a bare backbone.
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    metadata = getattr(state_dict, '_metadata', None) or {}
    record = metadata.get(module_path, {}).get(ARCH_META_KEY)
    if record is None:
        meta = checkpoint.get('meta')
        if isinstance(meta, Mapping):
            record = (meta.get(ARCH_META_KEY) or {}).get(module_path)
    return record


def sub_state_dict(state_dict: Mapping, prefix: str) -> 'OrderedDict':
    """The entries of ``state_dict`` under ``prefix``, without it.

    The per-module metadata (``_metadata``, where the arch record is) comes
    along, re-keyed relative to ``prefix``, so the result loads like a state
    dict saved from the sub-module itself.

    Args:
        state_dict (Mapping): A state dict (with or without ``_metadata``).
        prefix (str): E.g. ``'backbone.'``; ``''`` keeps everything.
    """
    out = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                      if k.startswith(prefix))
    path = prefix[:-1]
    metadata = getattr(state_dict, '_metadata', None) or {}
    out._metadata = OrderedDict()
    for key, value in metadata.items():
        if not path:
            out._metadata[key] = value
        elif key == path:
            out._metadata[''] = value
        elif key.startswith(prefix):
            out._metadata[key[len(prefix):]] = value
    return out


def infer_arch(state_dict: Mapping, backbone: nn.Module) -> dict:
    """What a PeLK state dict's shapes say about its arch.

    Args:
        state_dict (Mapping): Backbone keys without prefix.
        backbone (PeLK): Whose ``locate`` maps the keys to stages and
            blocks.

    Returns:
        dict: ``depths`` (from the block keys), ``channels`` (block norms),
        ``conv_channels`` and ``peripheral_weight_sizes`` (the side of the
        peripheral conv weights: ``k'`` when compact, ``K`` once deployed
        dense),
        ``pos_embed`` and, when positional embeddings are present,
        ``kernel_sizes``. Fields the keys do not show are left out.
    """
    blocks: Dict[int, int] = {}
    for key in state_dict:
        where = backbone.locate(key)
        if where.part == 'block':
            blocks[where.stage] = max(
                blocks.get(where.stage, 0), where.block + 1)
    stages = range(max(blocks) + 1) if blocks else range(0)
    record = dict(depths=[blocks.get(i, 0) for i in stages])

    def shapes(template):
        found = [state_dict.get(template.format(i)) for i in stages]
        return None if any(
            t is None for t in found) else [tuple(t.shape) for t in found]

    norms = shapes('stages.{}.0.norm.weight')
    if norms:
        record['channels'] = [s[0] for s in norms]
    weights = shapes('stages.{}.0.peripheral_conv.weight')
    if weights:
        record['conv_channels'] = [s[0] for s in weights]
        record['peripheral_weight_sizes'] = [s[-1] for s in weights]
    pos_embeds = shapes('pos_embeds.{}')
    record['pos_embed'] = pos_embeds is not None
    if pos_embeds:
        record['kernel_sizes'] = [s[-1] for s in pos_embeds]
    return record


def _summary(record: dict) -> str:
    return ', '.join(f'{k}={record[k]!r}' for k in _SUMMARY_FIELDS
                     if k in record)


def _advice(ckpt: dict, model: dict) -> str:
    """What to set so that the config builds the checkpoint's arch."""
    if 'grids' in ckpt:  # a full record, from the checkpoint's metadata
        name = arch_name(ckpt)
        arch = repr(name) if name else (
            f'dict(depths={ckpt["depths"]}, channels={ckpt["channels"]}, '
            f'grids={ckpt["grids"]})')
        extra = [
            f'{k}={ckpt[k]!r}'
            for k in ('conv_ratio', 'pos_embed', 'pos_embed_mode', 'deploy',
                      'deploy_mode', 'in_channels', 'stem_patch_size')
            if k in ckpt and ckpt[k] != model.get(k)
        ]
        setting = ', '.join([f'arch={arch}'] + extra)
    else:
        arch = dict(depths=ckpt.get('depths'))
        for key in ('channels', 'kernel_sizes'):
            if key in ckpt:
                arch[key] = ckpt[key]
        setting = 'arch=dict(' + ', '.join(f'{k}={v}'
                                           for k, v in arch.items()) + ')'
        if 'kernel_sizes' not in ckpt:
            setting += (' with the kernel sizes the checkpoint was trained '
                        'with')
    return (f'Build the backbone the checkpoint was made for ({setting}), or '
            f'use a checkpoint made for this arch.')


def _with_deploy_mode(record: Optional[dict]) -> Optional[dict]:
    """A record written before the structured deploy form existed has no
    ``deploy_mode``: a deployed one was dense."""
    if record is None or 'deploy_mode' in record:
        return record
    return dict(record, deploy_mode='dense' if record.get('deploy') else None)


def check_state_dict(model: nn.Module,
                     state_dict: Mapping,
                     checkpoint_record: Optional[dict] = None,
                     prefix: str = '') -> List[str]:
    """Check that ``state_dict`` fits the PeLK ``model`` exactly.

    Args:
        model (PeLK): The backbone to load into.
        state_dict (Mapping): Its incoming weights, keys without ``prefix``.
        checkpoint_record (dict, optional): The checkpoint's arch record
            (:func:`find_arch_record`); without it, the checkpoint's arch is
            inferred from its shapes (:func:`infer_arch`).
        prefix (str): Where the backbone sits in the model being loaded;
            the message names the keys with it (e.g. ``'backbone.'``).

    Returns:
        list[str]: The missing output norms ``norm{i}.*`` (allowed: they
        keep their initialisation).

    Raises:
        PeLKCheckpointMismatch: A shape mismatch, a missing key other than an
            output norm, blocks / stages / positional embeddings that the
            model does not have, or a ``checkpoint_record`` of another arch
            (``depths``, ``channels``, ``grids``, ``conv_channels``, stem,
            ``pos_embed``, ``deploy`` or ``deploy_mode`` differ) even if
            every shape fits.
            The message lists every such key (with both shapes), both
            archs and what to do.
    """
    checkpoint_record = _with_deploy_mode(checkpoint_record)
    own_tensors = model.state_dict(keep_vars=True)
    own = OrderedDict((k, tuple(v.shape)) for k, v in own_tensors.items())
    mismatched: List[Tuple[str, tuple, tuple]] = []
    for key, shape in own.items():
        if key in state_dict and hasattr(state_dict[key], 'shape'):
            theirs = tuple(state_dict[key].shape)
            if theirs != shape:
                mismatched.append((key, theirs, shape))
    missing = [k for k in own if k not in state_dict]
    missing_norms = [k for k in missing if model.locate(k).part == 'norm']
    missing = [k for k in missing if k not in missing_norms]

    def unit(key: str) -> Optional[str]:
        where = model.locate(key)
        return where.unit if where.part in _UNIT_PARTS else None

    own_units = {unit(k) for k in own} - {None}
    foreign = [
        k for k in state_dict
        if k not in own and unit(k) is not None and unit(k) not in own_units
    ]
    other_arch = checkpoint_record is not None and any(
        checkpoint_record[k] != model.arch_record()[k]
        for k in _ARCH_FIELDS if k in checkpoint_record)
    if not (mismatched or missing or foreign or other_arch):
        return missing_norms

    lines = ['The checkpoint does not fit this PeLK; nothing was loaded.']
    if mismatched:
        lines.append(f'{len(mismatched)} shape mismatch(es), checkpoint vs '
                     'model:')
        lines += [f'  {prefix}{k}: {a} vs {b}' for k, a, b in mismatched]
    if missing:
        lines.append(f'{len(missing)} key(s) missing from the checkpoint:')
        lines += [f'  {prefix}{k} {own[k]}' for k in missing]
    if foreign:
        lines.append(f'{len(foreign)} key(s) of blocks, stages or positional '
                     'embeddings this PeLK does not have:')
        lines += [f'  {prefix}{k}' for k in foreign]
    if not (mismatched or missing or foreign):
        lines.append('Every tensor shape fits, but the checkpoint records '
                     'another arch: the compact weights of one sharing grid '
                     'have the shapes of those of another (the same k\' for '
                     'another kernel size), and would mean other taps.')
    if checkpoint_record is not None:
        ckpt, mine, source = (checkpoint_record, model.arch_record(),
                              'its metadata')
    else:
        ckpt, mine, source = (infer_arch(state_dict, model),
                              infer_arch(own_tensors, model),
                              'inferred from its tensor shapes')
    lines.append(f'Checkpoint arch ({source}): {_summary(ckpt)}')
    lines.append(f'Config asks for: {_summary(mine)}')
    differences = [
        f'{k}: checkpoint {ckpt[k]!r}, config {mine[k]!r}'
        for k in _SUMMARY_FIELDS + ('conv_ratio', )
        if k in ckpt and k in mine and ckpt[k] != mine[k]
    ]
    if differences:
        lines.append('Differences: ' + '; '.join(differences))
        lines.append(_advice(ckpt, model.arch_record()))
    else:
        lines.append('The archs agree, so the file itself lacks or adds '
                     'weights (incomplete or edited?); save it again from a '
                     'complete model.')
    raise PeLKCheckpointMismatch('\n'.join(lines))
