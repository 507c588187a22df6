"""ONNX export of the deploy form, checked with onnxruntime (CPU).

A small PeLK with real large kernels (101, 51, 31 and 13) inside a UperNet,
inside a classifier, inside a Cascade Mask R-CNN (its backbone exported) and
bare, goes the way a user takes: a trained-like checkpoint (sparse weights,
non-zero positional embeddings), folded by
``tools/model_converters/pelk_deploy.py``, exported by
``tools/deployment/pytorch2onnx.py --verify``; onnxruntime must then match
the original (non-deploy, FFT) PyTorch model within 1e-4 relative, at another
batch size than the exported one (dynamic batch). The default structured
form holds only the box-sum operators (no large-kernel ``Conv``); the dense
form (``deploy_mode=dense``) holds the ``K x K`` convs.
"""
import subprocess
import sys

import pytest
import torch

from pelk_mm import PeLK, PeripheralConv2d
from pelk_mm.mm.builder import build_model
from helpers import ROOT, load_tool

_OUTPUTS = load_tool('deployment/output_comparison.py')
compare_outputs, tensor_outputs = (_OUTPUTS.compare_outputs,
                                   _OUTPUTS.tensor_outputs)

pytestmark = pytest.mark.slow

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

ARCH = """dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128],
           kernel_sizes=[101, 51, 31, 13], center_sizes=5)"""
CONFIGS = {
    'segmentor':
    """
_base_ = ['{root}/configs/demo/upernet_pelk_demo_ade20k.py']
model = dict(
    backbone=dict(arch={arch}, init_cfg=None),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=16),
    auxiliary_head=dict(in_channels=64, channels=16))
""",
    'classifier':
    """
_base_ = ['{root}/configs/pelk_t_in1k.py']
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{arch})),
    head=dict(in_channels=128, num_classes=10))
""",
    'backbone':
    """
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
model = dict(type='PeLK', arch={arch}, out_indices=(0, 1, 2, 3),
             gap_before_final_norm=False)
""",
    'detector':
    """
_base_ = ['{root}/configs/cascade_mask_rcnn_pelk_t_fpn_3x_coco.py']
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{arch}), init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128]))
""",
}
DEPLOY = {
    'segmentor': ['model.backbone.deploy=True'],
    'classifier': ['model.backbone.deploy=True'],
    'backbone': ['model.deploy=True'],
    'detector': ['model.backbone.deploy=True'],
}
PREFIX = {'backbone': 'model.', 'detector': 'model.backbone.'}
OUTPUTS = {
    'segmentor': [(3, 150, 16, 16)],  # ADE20K's 150 classes at 1/4
    'classifier': [(3, 10)],
    'backbone': [(3, 16, 16, 16), (3, 32, 8, 8), (3, 64, 4, 4),
                 (3, 128, 2, 2)],
}
OUTPUTS['detector'] = OUTPUTS['backbone']


def write_config(tmp_path, kind):
    path = tmp_path / f'{kind}.py'
    path.write_text(CONFIGS[kind].format(root=ROOT, arch=ARCH))
    return str(path)


def trained_like_checkpoint(config, path):
    """Whole-model checkpoint with sparse weights and non-zero PEs."""
    torch.manual_seed(0)
    model = build_model(config)
    model.init_weights()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PeripheralConv2d):
                m.bias.normal_(generator=gen)
                m.weight.mul_(torch.rand(m.weight.shape, generator=gen) > 0.4)
            if isinstance(m, PeLK):
                for h in m.pos_embeds:
                    h.normal_(std=0.1, generator=gen)
    torch.save({'state_dict': model.state_dict()}, path)
    return model


@pytest.mark.parametrize('kind,deploy_mode', [('segmentor', 'structured'),
                                              ('classifier', 'structured'),
                                              ('backbone', 'structured'),
                                              ('detector', 'structured'),
                                              ('segmentor', 'dense'),
                                              ('backbone', 'dense')])
def test_export_matches_onnxruntime(kind, deploy_mode, tmp_path, capsys):
    config = write_config(tmp_path, kind)
    trained = str(tmp_path / 'trained.pth')
    deployed, out = str(tmp_path / 'deployed.pth'), str(tmp_path / 'm.onnx')
    original = trained_like_checkpoint(config, trained)
    mode = [] if deploy_mode == 'structured' else [
        f'{PREFIX.get(kind, "model.backbone.")}deploy_mode=dense'
    ]
    fold = [config, trained, deployed, '--shape', '64', '64']
    load_tool('model_converters/pelk_deploy.py').main(
        fold + (['--cfg-options', *mode] if mode else []))
    backbone = ['--backbone'] if kind == 'detector' else []
    load_tool('deployment/pytorch2onnx.py').main([
        config, deployed, '--shape', '64', '64', '--out', out, '--verify',
        *backbone, '--cfg-options', *DEPLOY[kind], *mode
    ])
    log = capsys.readouterr().out
    assert 'onnxruntime (CPU) vs PyTorch' in log
    assert 'max relative error' in log
    assert f'{deploy_mode} deploy form' in log

    graph = onnx.load(out)
    onnx.checker.check_model(graph)
    versions = [
        o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx')
    ]
    assert versions == [17]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    kernels = {
        tuple(a.ints)
        for n in graph.graph.node if n.op_type == 'Conv' for a in n.attribute
        if a.name == 'kernel_shape'
    }
    large = {(101, 101), (51, 51), (31, 31), (13, 13)}
    if deploy_mode == 'dense':
        assert large <= kernels
    else:  # the stem's 4x4, the downsampling 2x2, UperNet's 3x3 and 1x1
        assert max(max(k) for k in kernels) <= 4, kernels
    assert not {n.op_type
                for n in graph.graph.node
                } & {'DFT', 'STFT', 'Loop', 'Scan', 'CumSum'}
    assert {o.domain for o in graph.opset_import} <= {'', 'ai.onnx'}

    # onnxruntime against the original, non-deploy model, batch 3 (exported
    # with batch 1)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    outputs = [
        torch.from_numpy(o) for o in session.run(None, {'input': x.numpy()})
    ]
    assert [tuple(o.shape) for o in outputs] == OUTPUTS[kind]
    if kind == 'detector':
        original = original.backbone
    with torch.no_grad():
        max_abs, max_rel = compare_outputs(outputs,
                                           tensor_outputs(original, x))
    print(f'{kind}, {deploy_mode}: onnxruntime vs the non-deploy PyTorch '
          f'model: max abs error {max_abs:.2e}, relative {max_rel:.2e}; '
          '--verify said: ' + log.strip().splitlines()[-1])
    assert max_rel <= 1e-4, (max_abs, max_rel)


def test_non_deploy_form_is_refused_before_export(tmp_path):
    config = write_config(tmp_path, 'segmentor')
    trained = str(tmp_path / 'trained.pth')
    trained_like_checkpoint(config, trained)
    out = tmp_path / 'm.onnx'
    proc = subprocess.run([
        sys.executable, 'tools/deployment/pytorch2onnx.py', config, trained,
        '--shape', '64', '64', '--out',
        str(out)
    ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert 'not in its deploy form' in proc.stderr
    assert 'pelk_deploy.py' in proc.stderr
    assert 'model.backbone.deploy=True' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not out.exists()


def test_exporter_is_feature_detected(tmp_path, monkeypatch):
    """The installed torch exports through the TorchScript exporter (the
    model runs under ``torch.jit`` tracing, not torch.export); a torch
    without the ``dynamo`` switch (torch 2.1) gets the plain call."""
    tool = load_tool('deployment/pytorch2onnx.py')
    model = PeLK(
        arch=dict(depths=[1, 1], channels=[16, 32], kernel_sizes=[31, 13]),
        deploy=True,
        out_indices=(0, 1),
        gap_before_final_norm=False).eval()
    traced = []
    hook = model.register_forward_hook(
        lambda *_: traced.append(torch.jit.is_tracing()))
    tool.export(model, (40, 24), str(tmp_path / 'installed.onnx'))
    hook.remove()
    assert traced and all(traced)
    real_export, calls = torch.onnx.export, []

    def legacy_export(model,
                      args,
                      f,
                      input_names=None,
                      output_names=None,
                      dynamic_axes=None,
                      opset_version=None):
        calls.append(opset_version)
        real_export(
            model,
            args,
            f,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset_version,
            **exporter)

    exporter = tool.exporter_kwargs()  # the real export's own switch
    monkeypatch.setattr(torch.onnx, 'export', legacy_export)
    assert tool.exporter_kwargs() == {}
    out = str(tmp_path / 'legacy.onnx')
    assert tool.export(model, (40, 24), out) == ['feat0', 'feat1']
    assert calls == [17]
    x = torch.randn(2, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    outputs = [
        torch.from_numpy(o) for o in session.run(None, {'input': x.numpy()})
    ]
    with torch.no_grad():
        assert compare_outputs(outputs, model(x))[1] <= 1e-4
