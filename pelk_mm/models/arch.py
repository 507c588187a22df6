"""The PeLK arch table and its parsing.

An arch is given by name (a key of :data:`ARCH_SETTINGS`) or as a dict; both
resolve, through :func:`parse_arch`, to the depths, the channels and one
sharing grid per stage (Eq. 1-2: the grid's sum is the stage's kernel size
``K``). :func:`arch_name` goes back from an arch record to its name.
"""
from typing import Dict, List, Optional, Union

from ..ops import check_grid, sharing_grid

#: The paper's archs: ConvNeXt's depths, ``int(1.3 x)`` ConvNeXt's channels,
#: the kernel size of each stage and the side of the dense centre of the
#: sharing grids.
ARCH_SETTINGS: Dict[str, dict] = {
    'tiny': {
        'depths': [3, 3, 9, 3],
        'channels': [124, 249, 499, 998],
        'kernel_sizes': [51, 49, 47, 13],
        'center_sizes': 5,
    },
    'small': {
        'depths': [3, 3, 27, 3],
        'channels': [124, 249, 499, 998],
        'kernel_sizes': [51, 49, 47, 13],
        'center_sizes': 5,
    },
    'base': {
        'depths': [3, 3, 27, 3],
        'channels': [166, 332, 665, 1331],
        'kernel_sizes': [51, 49, 47, 13],
        'center_sizes': 5,
    },
    'tiny-101': {
        'depths': [3, 3, 9, 3],
        'channels': [124, 249, 499, 998],
        'kernel_sizes': [101, 69, 67, 13],
        'center_sizes': 7,
    },
    'small-101': {
        'depths': [3, 3, 27, 3],
        'channels': [124, 249, 499, 998],
        'kernel_sizes': [101, 69, 67, 13],
        'center_sizes': 7,
    },
    'base-101': {
        'depths': [3, 3, 27, 3],
        'channels': [166, 332, 665, 1331],
        'kernel_sizes': [101, 69, 67, 13],
        'center_sizes': 7,
    },
}

#: The keys of an ``arch`` dict (see :func:`parse_arch`).
ARCH_KEYS = ('depths', 'channels', 'kernel_sizes', 'center_sizes', 'base',
             'grids')


def parse_arch(arch: Union[str, dict]) -> Dict[str, list]:
    """Resolve ``arch`` to depths, channels and one grid per stage.

    Args:
        arch (str | dict): A key of :data:`ARCH_SETTINGS`, or a dict with
            ``depths`` and ``channels`` (one int per stage) and either
            ``kernel_sizes`` (odd ints) with optional ``center_sizes`` (an
            int or one per stage, default 5) and ``base`` (default 2), or
            ``grids`` (one explicit sharing grid per stage; with
            ``kernel_sizes`` too, they must agree).

    Returns:
        dict: ``depths``, ``channels`` (as given) and ``grids`` (a list of
        tuples, see :func:`pelk_mm.sharing_grid`).

    Raises:
        ValueError: an unknown name, missing, unknown or inconsistent keys,
            lists that are not one entry per stage.
    """
    if isinstance(arch, str):
        if arch not in ARCH_SETTINGS:
            raise ValueError(f'`arch` must be one of {list(ARCH_SETTINGS)} '
                             f'or a dict, got {arch!r}')
        arch = ARCH_SETTINGS[arch]
    if not isinstance(arch, dict):
        raise ValueError('`arch` must be a str or a dict with keys '
                         f'depths, channels, kernel_sizes or grids, '
                         f'got {type(arch).__name__}')
    missing = {'depths', 'channels'} - set(arch)
    if missing or not {'kernel_sizes', 'grids'} & set(arch):
        raise ValueError(
            '`arch` dict needs keys depths, channels and kernel_sizes '
            f'(with optional center_sizes, base) or grids, got '
            f'{sorted(arch)}')
    unknown = set(arch) - set(ARCH_KEYS)
    if unknown:
        raise ValueError(f'`arch` dict has unknown key(s) {sorted(unknown)}; '
                         f'its keys are {list(ARCH_KEYS)}')
    num_stages = _int_list(arch, 'depths')
    for key in ('channels', 'kernel_sizes', 'center_sizes', 'grids'):
        if key in arch and not (key == 'center_sizes'
                                and isinstance(arch[key], int)):
            _int_list(arch, key, num_stages, ints=key != 'grids')
    if 'grids' in arch:
        grids = [check_grid(g) for g in arch['grids']]
        if 'kernel_sizes' in arch and list(
                arch['kernel_sizes']) != [sum(g) for g in grids]:
            raise ValueError('`arch` grids must sum to its kernel_sizes, '
                             f'got {grids} and {arch["kernel_sizes"]}')
    else:
        centers = arch.get('center_sizes', 5)
        if isinstance(centers, int):
            centers = [centers] * num_stages
        grids = [
            sharing_grid(k, c, arch.get('base', 2))
            for k, c in zip(arch['kernel_sizes'], centers)
        ]
    return dict(depths=arch['depths'], channels=arch['channels'], grids=grids)


def _int_list(arch: dict,
              key: str,
              length: Optional[int] = None,
              ints: bool = True) -> int:
    """Check that ``arch[key]`` is a list / tuple (of ints with ``ints``) of
    ``length`` items (any length >= 1 without it); return its length."""
    value = arch[key]
    if not isinstance(value, (list, tuple)) or not value or (ints and not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f'`arch` {key} must be a non-empty list of '
                         f'{"ints" if ints else "grids"}, one per stage, got '
                         f'{value!r}')
    if length is not None and len(value) != length:
        raise ValueError(
            f'`arch` needs one entry per stage in each list: depths has '
            f'{length} ({list(arch["depths"])}), {key} has {len(value)} '
            f'({list(value)})')
    return len(value)


def arch_name(record: dict) -> Optional[str]:
    """The key of :data:`ARCH_SETTINGS` whose arch ``record`` is, if any.

    Args:
        record (dict): An arch record (:meth:`pelk_mm.PeLK.arch_record`);
            its ``depths``, ``channels`` and ``grids`` are compared.
    """
    for name, setting in ARCH_SETTINGS.items():
        parsed = parse_arch(setting)
        grids: List[list] = [list(g) for g in parsed['grids']]
        if (list(parsed['depths']) == record.get('depths')
                and list(parsed['channels']) == record.get('channels')
                and grids == record.get('grids')):
            return name
    return None
