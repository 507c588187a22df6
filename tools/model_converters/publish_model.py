"""Make a checkpoint ready for release (as mmseg's / mmpretrain's tool).

    python tools/model_converters/publish_model.py IN OUT

Keeps what evaluating and fine-tuning need and drops the training state:

- kept: ``state_dict``; ``meta`` (config, dataset meta, versions, the arch
  record, ...) without ``hook_msgs`` (the local path of the last checkpoint);
  ``sparsity`` (the masks of ``DynamicSparsityHook``, which ``load_from`` in
  ``dynamic`` mode keeps);
- dropped: ``optimizer``, ``param_schedulers``, ``message_hub`` and anything
  else.

The file is written as ``<OUT without .pth>_YYYYMMDD-<sha256[:8]>.pth``: the
hash prefix after the last ``-`` is what
:func:`pelk_mm.checkpoint.read_checkpoint` (``init_cfg=dict(type='Pretrained',
checkpoint='https://...')`` of a PeLK, the tools) and mmengine with
:func:`pelk_mm.checkpoint.use_safe_url_loader` (``tools/test.py CONFIG
https://...``) check on download.
"""
import argparse
import datetime
import hashlib
import os

import torch

from pelk_mm.checkpoint import read_checkpoint

KEEP = ('state_dict', 'meta', 'sparsity')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Strip training state from a checkpoint and name it '
        'with its date and sha256 prefix')
    parser.add_argument('in_file', help='input checkpoint (path or URL)')
    parser.add_argument('out_file', help='output path, e.g. out/model.pth')
    return parser.parse_args(argv)


def sha256sum(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def process_checkpoint(in_file: str, out_file: str) -> str:
    """Write the release checkpoint; return its final path."""
    checkpoint = read_checkpoint(in_file)
    if 'state_dict' not in checkpoint:
        raise ValueError(f'{in_file} has no state_dict (keys: '
                         f'{sorted(checkpoint)})')
    published = {k: checkpoint[k] for k in KEEP if k in checkpoint}
    if 'meta' in published:
        published['meta'] = {
            k: v
            for k, v in published['meta'].items() if k != 'hook_msgs'
        }
    stem = out_file[:-len('.pth')] if out_file.endswith('.pth') else out_file
    tmp_file = f'{stem}.tmp.pth'
    torch.save(published, tmp_file)
    date = datetime.datetime.now().strftime('%Y%m%d')
    final_file = f'{stem}_{date}-{sha256sum(tmp_file)[:8]}.pth'
    os.replace(tmp_file, final_file)
    return final_file


def main(argv=None):
    args = parse_args(argv)
    final_file = process_checkpoint(args.in_file, args.out_file)
    print(final_file)


if __name__ == '__main__':
    main()
