# The ONNX export settings of every deploy config here: opset 17, as
# tools/deployment/pytorch2onnx.py exports; each config names its outputs
# (and its dynamic axes).
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=17,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['output'],
    input_shape=None,
    optimize=True)
backend_config = dict(type='onnxruntime')
