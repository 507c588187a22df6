"""The op of the structured deploy form: peripheral convolution by band
sums, in both layouts (band matrices, box means) exact against the dense
convolution, exported with standard ONNX operators only and run by
onnxruntime at another batch size than the exported one."""
import importlib.util
import inspect

import pytest
import torch
import torch.nn.functional as F

from pelk_mm.ops import expand_weight, sharing_grid
from pelk_mm.ops.boxsum_conv import (BoxSumPeripheralConv2d,
                                     boxsum_peripheral_conv,
                                     uses_band_matrices)
from helpers import load_tool

#: (K, centre, map): maps larger and smaller than the kernel, 1 x 1, wide
CASES = [(13, 5, (16, 16)), (31, 5, (7, 40)), (51, 5, (20, 37)),
         (51, 5, (60, 53)), (101, 7, (9, 130)), (101, 7, (1, 1))]

#: What the graph computes at run time (nodes that depend on the input)
RUNTIME_OPS = {
    'Pad', 'AveragePool', 'Concat', 'Gather', 'MatMul', 'Transpose', 'Add',
    'Reshape'
}
#: The layouts, as ``boxsum_peripheral_conv``'s ``band_matrices``
LAYOUTS = {'matrices': True, 'means': False}


def dense(x, weight, grid):
    return F.conv2d(
        x,
        expand_weight(weight, grid),
        padding=sum(grid) // 2,
        groups=x.shape[1])


def inputs(channels, size, grid, dtype=torch.float64, batch=2):
    gen = torch.Generator().manual_seed(sum(grid) + size[0])
    x = torch.randn(batch, channels, *size, generator=gen, dtype=dtype)
    weight = torch.randn(
        channels, 1, len(grid), len(grid), generator=gen, dtype=dtype)
    return x, weight


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('kernel_size,center,size', CASES)
def test_equals_dense_conv(kernel_size, center, size, layout):
    grid = sharing_grid(kernel_size, center)
    x, weight = inputs(3, size, grid)
    ref = dense(x, weight, grid)
    out = boxsum_peripheral_conv(x, weight, grid, LAYOUTS[layout])
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12 * ref.abs().max())


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('size', [(6, 9), (2, 1), (1, 3)])
def test_asymmetric_grid(size, layout):
    grid = (3, 1, 5, 2, 2)
    x, weight = inputs(3, size, grid)
    ref = dense(x, weight, grid)
    torch.testing.assert_close(
        boxsum_peripheral_conv(x, weight, grid, LAYOUTS[layout]),
        ref,
        rtol=0,
        atol=1e-12 * ref.abs().max())


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('kernel_size,center,size', [(51, 5, (64, 64)),
                                                     (101, 7, (40, 120))])
def test_float32_error_within_dense_float32(kernel_size, center, size, layout):
    """Band sums add at most max(grid) nonzero terms: no prefix-sum
    round-off."""
    grid = sharing_grid(kernel_size, center)
    x, weight = inputs(4, size, grid)
    ref = dense(x, weight, grid)
    x32, w32 = x.float(), weight.float()
    out = boxsum_peripheral_conv(x32, w32, grid, LAYOUTS[layout])
    box_err = (out.double() - ref).abs()
    dense_err = (dense(x32, w32, grid).double() - ref).abs()
    assert box_err.max() <= dense_err.max()


def test_layout_follows_the_map_size():
    """Band matrices where ``k' (H + W + k')`` is small (PeLK-T's 64 x 64,
    32 x 32 and 16 x 16 maps at 512 x 512), box means on its 128 x 128
    maps; the default layout is the one picked."""
    picked = {
        side: uses_band_matrices(sharing_grid(k, 5), side, side)
        for k, side in [(51, 128), (49, 64), (47, 32), (13, 16)]
    }
    assert picked == {128: False, 64: True, 32: True, 16: True}
    for kernel_size, side in [(13, 16), (51, 128)]:
        grid = sharing_grid(kernel_size, 5)
        x, weight = inputs(1, (side, side), grid, dtype=torch.float32)
        assert torch.equal(
            boxsum_peripheral_conv(x, weight, grid),
            boxsum_peripheral_conv(x, weight, grid,
                                   uses_band_matrices(grid, side, side)))


def test_module_folds_bias_and_matches_dense_weight():
    grid = sharing_grid(31, 5)
    conv = BoxSumPeripheralConv2d(5, grid)
    assert conv.weight.shape == (5, 1, 11, 11) and conv.bias.shape == (5, )
    x = torch.randn(2, 5, 12, 17, generator=torch.Generator().manual_seed(0))
    ref = F.conv2d(x, conv.dense_weight(), conv.bias, padding=15, groups=5)
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


def runtime_ops(graph):
    """Op types of the nodes that depend on the graph input (the rest are
    constant subgraphs, e.g. the TorchScript exporter's pads of ``Pad``)."""
    live, ops = {i.name for i in graph.input}, set()
    for node in graph.node:  # topologically sorted
        if live & set(node.input):
            live |= set(node.output)
            ops.add(node.op_type)
    return ops


def export_and_run(module, size, out, batch=3, dynamo=False):
    """Export at batch 1 (dynamic batch axis), run onnxruntime at ``batch``;
    return the graph and the relative error against the dense conv."""
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    x1 = torch.zeros(1, module.channels, *size)
    dynamic = (
        dict(dynamic_shapes=({
            0: torch.export.Dim('batch')
        }, )) if dynamo else dict(dynamic_axes={'x': {
            0: 'batch'
        }}))
    # the TorchScript exporter as pytorch2onnx.py selects it (torch 2.1 has
    # no `dynamo` switch), or the torch.export-based one
    exporter = dict(dynamo=True) if dynamo else load_tool(
        'deployment/pytorch2onnx.py').exporter_kwargs()
    torch.onnx.export(
        module, (x1, ),
        out,
        input_names=['x'],
        opset_version=17,
        **exporter,
        **dynamic)
    graph = onnx.load(out)
    onnx.checker.check_model(graph)
    x = torch.randn(
        batch,
        module.channels,
        *size,
        generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    got = torch.from_numpy(session.run(None, {'x': x.numpy()})[0])
    with torch.no_grad():
        ref = F.conv2d(
            x.double(),
            module.dense_weight().double(),
            module.bias.double(),
            padding=module.kernel_size // 2,
            groups=module.channels)
    return graph, float((got.double() - ref).abs().max() / ref.abs().max())


#: (K, centre, map, the layout the map size picks)
ONNX_CASES = [(13, 5, (20, 18), 'matrices'), (51, 5, (9, 60), 'matrices'),
              (51, 5, (60, 100), 'means'), (101, 7, (5, 3), 'matrices'),
              (101, 7, (110, 8), 'means')]


def layout_ops(layout):
    """Operators that only the layout's graph computes at run time."""
    return {'Transpose'} if layout == 'matrices' else {'AveragePool', 'Pad'}


@pytest.mark.parametrize('kernel_size,center,size,layout', ONNX_CASES)
def test_onnx_standard_operators_dynamic_batch(kernel_size, center, size,
                                               layout, tmp_path):
    torch.manual_seed(0)
    module = BoxSumPeripheralConv2d(4, sharing_grid(kernel_size, center))
    graph, rel = export_and_run(module.eval(), size,
                                str(tmp_path / 'box.onnx'))
    assert rel <= 1e-5, rel
    ops = runtime_ops(graph.graph)
    assert ops <= RUNTIME_OPS
    assert layout_ops(layout) <= ops
    assert not layout_ops('means' if layout ==
                          'matrices' else 'matrices') & ops
    assert {o.domain for o in graph.opset_import} == {''}
    assert not {n.op_type
                for n in graph.graph.node
                } & {'Loop', 'If', 'Scan', 'CumSum', 'Conv'}
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param


@pytest.mark.skipif(
    importlib.util.find_spec('onnxscript') is None,
    reason='the torch.export-based exporter needs onnxscript')
@pytest.mark.skipif(
    'dynamo' not in inspect.signature(torch.onnx.export).parameters,
    reason=f'torch {torch.__version__} has no torch.export-based ONNX '
    'exporter (torch.onnx.export(dynamo=True): torch >= 2.5)')
@pytest.mark.parametrize('size,layout', [((12, 40), 'matrices'),
                                         ((60, 140), 'means')])
def test_torch_export_based_exporter(size, layout, tmp_path):
    """The same op through ``dynamo=True``: the same operators."""
    torch.manual_seed(0)
    module = BoxSumPeripheralConv2d(4, sharing_grid(31, 5)).eval()
    graph, rel = export_and_run(
        module, size, str(tmp_path / 'box.onnx'), dynamo=True)
    assert rel <= 1e-5, rel
    ops = {n.op_type for n in graph.graph.node}
    assert ops <= RUNTIME_OPS
    assert layout_ops(layout) <= ops
