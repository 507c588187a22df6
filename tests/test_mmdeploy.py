"""Deployment through mmdeploy: a small UperNet-PeLK exported by
``mmdeploy.apis.torch2onnx`` (through ``tools/deployment/mmdeploy_export.py``)
with the deploy config of ``tools/deployment/mmdeploy/``, run by
onnxruntime, against PyTorch.

The way docs/deployment.md tells a user: the training form folded into the
deploy form (``switch_to_deploy``, structured band sums), its checkpoint and
the model config with ``model.backbone.deploy=True`` handed to mmdeploy.
onnxruntime's logits must match the *training* form's (FFT peripheral
convs) within 1e-4 relative, at an input whose last feature map is
divisible by the pyramid-pooling bins (1, 2, 3, 6), where mmdeploy's
``adaptive_avg_pool2d`` rewrite is exact. Skipped where mmdeploy is not
installed.
"""
import copy

import numpy as np
import pytest
import torch

from helpers import ROOT, load_tool

mmdeploy = pytest.importorskip(
    'mmdeploy',
    reason='mmdeploy is not installed (requirements/latest.txt '
    'installs it with --no-deps, tools/setup_env.sh)')
ort = pytest.importorskip('onnxruntime')
pytestmark = pytest.mark.slow  # exports ONNX

MODEL = """
_base_ = ['{root}/configs/demo/upernet_pelk_demo_ade20k.py']
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, depths=[1, 1, 1, 1],
                  channels=[16, 32, 64, 128], kernel_sizes=[51, 31, 13, 7],
                  center_sizes=3),
        init_cfg=None),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=16,
                     num_classes=5),
    auxiliary_head=None)
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
"""
DEPLOY_CFG = f'{ROOT}/tools/deployment/mmdeploy/' \
    'segmentation_onnxruntime_static.py'
SIZE = 192  # stride 32: a 6 x 6 last map, divisible by every PPM bin


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    import mmcv
    from mmengine.config import Config

    from pelk_mm.mm.builder import build_model
    tool = load_tool('deployment/mmdeploy_export.py')
    work = tmp_path_factory.mktemp('mmdeploy')
    (work / 'model.py').write_text(MODEL.format(root=ROOT))
    torch.manual_seed(0)
    trained = build_model(Config.fromfile(str(work / 'model.py'))).eval()
    with torch.no_grad():  # trained-like: non-zero positional embeddings
        for name, param in trained.backbone.named_parameters():
            if 'pos_embed' in name or name.endswith('bias'):
                param.normal_(0, 0.02)
    deployed = copy.deepcopy(trained)
    deployed.backbone.switch_to_deploy()
    torch.save({'state_dict': deployed.state_dict()}, work / 'deploy.pth')
    image = np.random.default_rng(0).integers(
        0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    mmcv.imwrite(image, str(work / 'image.png'))
    path = tool.main([
        DEPLOY_CFG,
        str(work / 'model.py'),
        str(work / 'deploy.pth'),
        str(work / 'image.png'), '--work-dir',
        str(work)
    ])
    return trained, path


def test_torch2onnx_matches_pytorch(exported):
    trained, path = exported
    x = torch.randn(
        2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = trained.encode_decode(x, [dict(img_shape=(SIZE, SIZE))] *
                                          2).numpy()
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    outputs = [
        session.run(None, {'input': x[i:i + 1].numpy()})[0] for i in range(2)
    ]
    logits = np.concatenate(outputs)
    assert logits.shape == reference.shape == (2, 5, SIZE, SIZE)
    error = np.abs(logits - reference).max() / np.abs(reference).max()
    assert error < 1e-4, error


def test_graph_is_the_structured_deploy_form(exported):
    import onnx
    graph = onnx.load(exported[1]).graph
    ops = {node.op_type for node in graph.node}
    assert 'MatMul' in ops  # the band sums (band matrices at this size)
    large = [
        init.name for init in graph.initializer
        if len(init.dims) == 4 and init.dims[-1] > 7
    ]
    assert not large, f'large conv kernels in the graph: {large}'
    assert all(node.domain in ('', 'ai.onnx') for node in graph.node)
