from .blocksum_conv import blocksum_peripheral_conv
from .dense_conv import dense_peripheral_conv
from .fft_conv import fft_peripheral_conv
from .impl_selection import select_impl
from .impl_tuning import load_choices, save_choices, set_tuning_mode
from .peripheral_conv import (PERIPHERAL_CONV_IMPLS, POS_EMBED_MODES,
                              PeripheralConv2d, peripheral_conv2d,
                              pos_embed_bias, pos_embed_map)
from .sharing_grid import check_grid, expand_weight, sharing_grid

__all__ = [
    'sharing_grid', 'check_grid', 'expand_weight', 'peripheral_conv2d',
    'dense_peripheral_conv', 'pos_embed_bias', 'pos_embed_map',
    'POS_EMBED_MODES', 'PERIPHERAL_CONV_IMPLS', 'PeripheralConv2d',
    'fft_peripheral_conv', 'blocksum_peripheral_conv', 'select_impl',
    'set_tuning_mode', 'save_choices', 'load_choices'
]
