"""The arch record of a PeLK and the strict check of incoming weights.

Every state dict of a model that holds a :class:`~pelk_mm.PeLK` carries the
backbone's :meth:`ArchRecordMixin.arch_record` in the per-module metadata that
PyTorch keeps next to the tensors, ``state_dict._metadata[<module path>]
['pelk_arch']`` (``'backbone'`` in a classifier / segmentor / detector,
``''`` for a bare backbone). A state-dict hook writes it, so the checkpoints of
every runner and tool have it (``torch.save`` keeps ``_metadata``, and
``torch.load(weights_only=True)`` restores it). Tools that write checkpoints
also mirror it into ``checkpoint['meta']['pelk_arch'] = {<module path>:
record}`` with :func:`add_arch_meta`.

Every load into PeLK (torch's and mmengine's ``load_state_dict``, hence
``Pretrained``, ``load_from``, ``--resume``, ``tools/test.py CONFIG CKPT``)
goes through :meth:`ArchRecordMixin._load_from_state_dict`, which calls
:func:`check_state_dict` and raises :class:`PeLKCheckpointMismatch` before any
weight is copied when a backbone tensor has another shape, a backbone key is
missing, the checkpoint's blocks are another network's (SLaK, ConvNeXt), it
has blocks / stages / positional embeddings the model does not have, or its
record names another arch even though every shape fits (the compact weights
of K = 21 and K = 31 with a 5x5 centre are both 11 x 11). The only keys
allowed to be missing are the output norms ``norm{i}``, which depend on
``out_indices`` rather than on the arch. Keys outside the backbone (heads)
are not the backbone's business. Tensors of another floating dtype load,
cast to the model's dtype by ``Tensor.copy_`` (exact from float16 / bfloat16
into float32).
"""
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional

import torch.nn as nn

#: Key of the architecture record in the state dict's per-module metadata and
#: in ``checkpoint['meta']``.
ARCH_META_KEY = 'pelk_arch'


class ArchField(NamedTuple):
    """One field of the arch record.

    Attributes:
        name (str): The record's key.
        value (callable): Its value (plain data) from a PeLK.
        checked (bool): A checkpoint recording another value is refused even
            when every shape fits. Fields that follow from checked ones
            (``kernel_sizes`` from ``grids``, ``conv_ratio`` from
            ``conv_channels``) and ``pos_embed_mode`` (the same weights,
            another embedding sum) are not.
        argument (str): The ``PeLK`` argument that sets it.
    """
    name: str
    value: Callable[[Any], Any]
    checked: bool
    argument: str


def _stem(pelk):
    return pelk.downsample_layers[0][0]


#: The arch record's fields, in order: everything the state dict's keys and
#: shapes depend on, plus ``pos_embed_mode`` (what the embedding computes).
ARCH_FIELDS = (
    ArchField('depths', lambda m: [int(d) for d in m.depths], True, 'arch'),
    ArchField('channels', lambda m: [int(c) for c in m.channels], True,
              'arch'),
    ArchField('kernel_sizes', lambda m: [int(k) for k in m.kernel_sizes],
              False, 'arch'),
    ArchField('grids', lambda m: [[int(b) for b in g] for g in m.grids], True,
              'arch'),
    ArchField('conv_ratio', lambda m: float(m.conv_ratio), False,
              'conv_ratio'),
    ArchField('conv_channels', lambda m: [int(c) for c in m.conv_channels],
              True, 'conv_ratio'),
    ArchField('in_channels', lambda m: int(_stem(m).in_channels), True,
              'in_channels'),
    ArchField('stem_patch_size', lambda m: int(_stem(m).kernel_size[0]), True,
              'stem_patch_size'),
    ArchField('pos_embed', lambda m: bool(m.with_pos_embed), True,
              'pos_embed'),
    ArchField('pos_embed_mode', lambda m: str(m.pos_embed_mode), False,
              'pos_embed_mode'),
    ArchField('deploy', lambda m: bool(m.deploy), True, 'deploy'),
    ArchField('deploy_mode', lambda m: str(m.deploy_mode)
              if m.deploy else None, True, 'deploy_mode'),
)

# The parts whose presence depends on the arch (depths, number of stages,
# pos_embed, deploy), as the backbone's ``locate`` names them.
_UNIT_PARTS = ('stem', 'downsample', 'block', 'pos_embed')
# the token mixer of a PeLK block, the part other networks do not have
_TOKEN_MIXER = 'peripheral_conv'


class PeLKCheckpointMismatch(ValueError):
    """A checkpoint does not fit the PeLK it is loaded into."""


def save_arch_record(module: nn.Module, state_dict: dict, prefix: str,
                     local_metadata: dict) -> None:
    """State-dict hook of :class:`ArchRecordMixin`: store its arch record.

    PyTorch's ``state_dict()`` and mmengine's ``get_state_dict`` both call it
    with the module's own metadata entry.
    """
    local_metadata[ARCH_META_KEY] = module.arch_record()


class ArchRecordMixin:
    """Checkpoint policy of :class:`~pelk_mm.PeLK`.

    Every state dict records the arch (call :meth:`_record_arch` once in
    ``__init__``) and every load refuses weights that do not fit, before any
    is copied (:func:`check_state_dict` against the record the weights came
    with).
    """

    def arch_record(self) -> dict:
        """The architecture as plain data (ints, lists, str, bool, None).

        Returns:
            dict: One entry per field of :data:`ARCH_FIELDS`, in order
            (``deploy_mode`` is None until deployed).
        """
        return {field.name: field.value(self) for field in ARCH_FIELDS}

    def _record_arch(self) -> None:
        """Register :func:`save_arch_record` as a state-dict hook."""
        self._register_state_dict_hook(save_arch_record)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Refuse weights that do not fit, before any is copied.

        Every loader calls this first for the backbone; see
        :func:`check_state_dict`.
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
    """The model inside a wrapper (DDP, mmengine's wrappers: ``.module``)."""
    inner = getattr(model, 'module', None)
    return inner if isinstance(inner, nn.Module) else model


def arch_records(model: nn.Module) -> Dict[str, dict]:
    """``{module path: arch record}`` of every module of ``model`` (unwrapped
    from DDP-style wrappers) with an ``arch_record()`` method (every
    :class:`~pelk_mm.PeLK`)."""
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
    ``{'backbone': {...}}``), creating ``meta`` if needed. The state dict
    itself carries the same record in its metadata already.

    Args:
        checkpoint (dict): The checkpoint to write; changed in place.
        model (nn.Module): The model whose weights it holds (after
            ``switch_to_deploy()`` for a deployed one; wrappers are
            unwrapped).
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

    Returns:
        dict | None: The record, None when the checkpoint has none.
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

    Returns:
        OrderedDict: The entries, with ``_metadata``.
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
        dense), ``pos_embed`` and, when positional embeddings are present,
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


# the record's fields, then the one only an inferred arch has
_SUMMARY_FIELDS = tuple(f.name
                        for f in ARCH_FIELDS) + ('peripheral_weight_sizes', )


def _summary(record: dict) -> str:
    return ', '.join(f'{k}={record[k]!r}' for k in _SUMMARY_FIELDS
                     if k in record)


def _advice(ckpt: dict, model: dict) -> str:
    """What to set so that the config builds the checkpoint's arch."""
    if 'grids' in ckpt:  # a full record, from the checkpoint's metadata
        # imported here: pelk_mm.models imports this module
        from pelk_mm.models.arch import arch_name
        name = arch_name(ckpt)
        arch = repr(name) if name else (
            f'dict(depths={ckpt["depths"]}, channels={ckpt["channels"]}, '
            f'grids={ckpt["grids"]})')
        extra = [
            f'{f.name}={ckpt[f.name]!r}' for f in ARCH_FIELDS
            if f.name == f.argument and f.name in ckpt
            and ckpt[f.name] != model.get(f.name)
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


def _foreign_blocks(model: nn.Module, state_dict: Mapping) -> List[str]:
    """The checkpoint's block keys that are not PeLK's, when none of its
    block keys is a key of PeLK's token mixer (``peripheral_conv``): its
    blocks are another network's (SLaK's and ConvNeXt's ``dwconv``,
    mmpretrain ConvNeXt's ``depthwise_conv``)."""
    blocks = [k for k in state_dict if model.locate(k).part == 'block']
    if any(
            model.locate(k).rest.startswith(_TOKEN_MIXER + '.')
            for k in blocks):
        return []
    return [
        k for k in blocks
        if not model.locate(k).rest.startswith(_TOKEN_MIXER + '.')
    ]


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
            inferred from its shapes (:func:`infer_arch`) and a warning says
            that a checkpoint of another kernel size whose compact weights
            have the same shapes cannot be told apart.
        prefix (str): Where the backbone sits in the model being loaded;
            the message names the keys with it (e.g. ``'backbone.'``).

    Returns:
        list[str]: The missing output norms ``norm{i}.*`` (allowed: they
        keep their initialisation).

    Raises:
        PeLKCheckpointMismatch: Block keys none of which is a PeLK key
            (another network's checkpoint), a shape mismatch, a missing key
            other than an output norm, blocks / stages / positional
            embeddings that the model does not have, or a
            ``checkpoint_record`` of another arch (a field of
            :data:`ARCH_FIELDS` with ``checked`` differs) even if every shape
            fits. The message lists every such key (with both shapes), both
            archs and what to do.
    """
    own_tensors = model.state_dict(keep_vars=True)
    own = OrderedDict((k, tuple(v.shape)) for k, v in own_tensors.items())
    foreign_blocks = _foreign_blocks(model, state_dict)
    if foreign_blocks:
        raise PeLKCheckpointMismatch(
            'The checkpoint is not a PeLK checkpoint; nothing was loaded. Its '
            f'blocks have no {_TOKEN_MIXER} (PeLK\'s token mixer, e.g. '
            f'{prefix}stages.0.0.{_TOKEN_MIXER}.weight) but '
            f'{len(foreign_blocks)} keys PeLK does not have (first: '
            f'{prefix}{foreign_blocks[0]}): they are another network\'s '
            'weights (SLaK and ConvNeXt name their depthwise conv `dwconv`, '
            'mmpretrain\'s ConvNeXt `depthwise_conv`). PeLK loads PeLK '
            'weights only: those of a PeLK classifier (configs/pelk_*_in1k.py'
            ', converted by tools/model_converters/cls2backbone.py), or none.')
    mismatched = []
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
    mine_record = model.arch_record()
    other_arch = checkpoint_record is not None and any(
        checkpoint_record[f.name] != mine_record[f.name]
        for f in ARCH_FIELDS if f.checked and f.name in checkpoint_record)
    if not (mismatched or missing or foreign or other_arch):
        if checkpoint_record is None:
            warnings.warn(
                'The checkpoint has no PeLK arch record (meta '
                f'{ARCH_META_KEY!r}): only its tensor shapes were checked. '
                'Without positional embeddings, the compact weights of '
                'another kernel size can have the same shapes (K = 21 and '
                'K = 31 with a 5x5 centre: both 11x11) and would load as '
                'other taps. Checkpoints saved by pelk-mm carry the record.',
                stacklevel=2)
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
        ckpt, mine, source = checkpoint_record, mine_record, 'its metadata'
    else:
        ckpt, mine, source = (infer_arch(state_dict, model),
                              infer_arch(own_tensors, model),
                              'inferred from its tensor shapes')
    lines.append(f'Checkpoint arch ({source}): {_summary(ckpt)}')
    lines.append(f'Config asks for: {_summary(mine)}')
    differences = [
        f'{k}: checkpoint {ckpt[k]!r}, config {mine[k]!r}'
        for k in _SUMMARY_FIELDS
        if k in ckpt and k in mine and ckpt[k] != mine[k]
    ]
    if differences:
        lines.append('Differences: ' + '; '.join(differences))
        lines.append(_advice(ckpt, mine_record))
    else:
        lines.append('The archs agree, so the file itself lacks or adds '
                     'weights (incomplete or edited?); save it again from a '
                     'complete model.')
    raise PeLKCheckpointMismatch('\n'.join(lines))
