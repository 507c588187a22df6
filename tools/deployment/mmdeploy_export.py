"""Export the deploy form of a PeLK model with mmdeploy's ``torch2onnx``.

    python tools/deployment/mmdeploy_export.py DEPLOY_CFG CONFIG CKPT IMG
        [--work-dir DIR] [--save-file end2end.onnx]
        [--cfg-options model.backbone.deploy_mode=dense ...]

DEPLOY_CFG is an mmdeploy deploy config (``tools/deployment/mmdeploy/``
holds one for mmseg segmentors and one for mmdet detectors, onnxruntime);
CONFIG the model's training config: the deploy form is built from it with
``model.backbone.deploy=True`` (plus ``--cfg-options``; the merged config is
written next to the ONNX file as ``deploy_model_cfg.py``); CKPT a folded
checkpoint (``tools/model_converters/pelk_deploy.py``); IMG the image whose
size fixes H x W of the export. It then calls
``mmdeploy.apis.torch2onnx`` as mmdeploy's own ``tools/deploy.py`` does,
with the TorchScript-based exporter selected by feature detection (torch >=
2.9 defaults ``torch.onnx.export`` to its torch.export-based exporter, which
mmdeploy's rewriters do not act on; :func:`torchscript_exporter`).

Prints the path of the ONNX file.
"""
import argparse
import contextlib
import functools
import importlib.util
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction

import pelk_mm  # noqa: F401  (registers PeLK)

HERE = osp.dirname(osp.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export the deploy form of a PeLK model with mmdeploy')
    parser.add_argument('deploy_cfg', help='mmdeploy deploy config')
    parser.add_argument('config', help='model config (training form)')
    parser.add_argument('checkpoint', help='folded (deploy-form) checkpoint')
    parser.add_argument('img', help='image whose size fixes H x W')
    parser.add_argument(
        '--work-dir', default='work_dirs/mmdeploy', help='output folder')
    parser.add_argument('--save-file', default='end2end.onnx')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the model config, key=value')
    return parser.parse_args(argv)


def _exporter_kwargs() -> dict:
    spec = importlib.util.spec_from_file_location(
        'pytorch2onnx', osp.join(HERE, 'pytorch2onnx.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.exporter_kwargs()


@contextlib.contextmanager
def torchscript_exporter():
    """``torch.onnx.export`` with the TorchScript-based exporter selected
    (``dynamo=False`` where torch has the switch) while the block runs."""
    kwargs = _exporter_kwargs()
    original = torch.onnx.export
    if kwargs:
        torch.onnx.export = functools.partial(original, **kwargs)
    try:
        yield
    finally:
        torch.onnx.export = original


def deploy_model_config(config: str, out: str, options=None) -> str:
    """Write CONFIG with ``model.backbone.deploy=True`` (then ``options``)
    to ``out``; returns ``out``."""
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'model.backbone.deploy': True})
    if options:
        cfg.merge_from_dict(options)
    cfg.dump(out)
    return out


def main(argv=None):
    args = parse_args(argv)
    from mmdeploy.apis import torch2onnx
    os.makedirs(args.work_dir, exist_ok=True)
    model_cfg = deploy_model_config(
        args.config, osp.join(args.work_dir, 'deploy_model_cfg.py'),
        args.cfg_options)
    with torchscript_exporter():
        torch2onnx(args.img, args.work_dir, args.save_file, args.deploy_cfg,
                   model_cfg, args.checkpoint, 'cpu')
    path = osp.join(args.work_dir, args.save_file)
    print(path)
    return path


if __name__ == '__main__':
    main()
