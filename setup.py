"""pelk-mm: PeLK (CVPR 2024) for OpenMMLab.

Pure PyTorch: no custom CUDA extension to build. ``pip install .`` installs
what ``import pelk_mm`` needs for the operator (torch >= 2.1 alone; on top of
an existing OpenMMLab environment it installs nothing but pelk-mm,
tests/test_install.py); the extras add
the OpenMMLab side, with the version ranges this plugin is tested against:

- ``[mm]``: mmengine, mmcv, mmpretrain: the ``PeLK`` backbone, the sparsity
  hook, the optimizer wrapper constructor, ImageNet classification configs,
  the tools;
- ``[seg]`` / ``[det]``: ``[mm]`` + mmsegmentation / mmdet, for the UperNet and
  Cascade Mask R-CNN configs (mmcv must be < 2.2.0: both assert it);
- ``[deploy]``: ONNX export and its onnxruntime check;
- ``[analysis]``: matplotlib for the plotting tools;
- ``[all]``: everything above.
"""
from setuptools import find_packages, setup

MM = [
    'mmengine>=0.10.0,<0.11.0',
    'mmcv>=2.0.0,<2.2.0',
    'mmpretrain>=1.2.0,<1.3.0',
    # mmengine imports pkg_resources for `mmseg::`-style base configs.
    'setuptools<81',
    # the demo data generators (pelk_mm.demo) draw with numpy and Pillow.
    'numpy',
    'Pillow',
]
EXTRAS = {
    'mm': MM,
    'seg': MM + ['mmsegmentation>=1.2.0,<1.3.0'],
    'det': MM + ['mmdet>=3.2.0,<3.4.0'],
    # The tools export with the TorchScript exporter; onnxscript serves the
    # torch.export-based one (dynamo=True, torch >= 2.5), tested beside it.
    'deploy': ['onnx', 'onnxruntime', 'onnxscript'],
    'analysis': ['matplotlib'],
}
EXTRAS['all'] = sorted({req for reqs in EXTRAS.values() for req in reqs})


def read_version():
    namespace = {}
    with open('pelk_mm/version.py') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='pelk-mm',
    version=read_version(),
    description=
    'PeLK: parameter-efficient large kernel ConvNets with peripheral '
    'convolution, as an OpenMMLab plugin (mmseg / mmdet / mmpretrain)',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['pelk_mm', 'pelk_mm.*']),
    # CI tests Python 3.10 (canonical stack) and 3.11 (latest stack);
    # docs/installation.md. 3.8 / 3.9 are not tested, so not admitted.
    python_requires='>=3.10',
    install_requires=[
        # The oldest torch CI tests (the canonical OpenMMLab stack: torch
        # 2.1.2 + mmcv 2.1.0); newer-torch APIs are feature
        # detected (pelk_mm/ops/autocast_policy.py, pelk_mm/engine/compat.py).
        'torch>=2.1',
    ],
    extras_require=EXTRAS,
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
