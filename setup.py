"""pelk-mm: PeLK (CVPR 2024) for OpenMMLab.

Pure PyTorch: no custom CUDA extension to build. The OpenMMLab packages are
declared with the version ranges this plugin is tested against; mmcv must be
< 2.2.0 because mmsegmentation 1.2.2 and mmdet 3.3.0 assert it.
"""
from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open('pelk_mm/version.py') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='pelk-mm',
    version=read_version(),
    description='PeLK: parameter-efficient large kernel ConvNets with peripheral '
    'convolution, as an OpenMMLab plugin (mmseg / mmdet / mmpretrain)',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['pelk_mm', 'pelk_mm.*']),
    python_requires='>=3.8',
    install_requires=[
        'torch>=1.13',
        'mmengine>=0.10.0,<0.11.0',
        'mmcv>=2.0.0,<2.2.0',
        'mmsegmentation>=1.2.0,<1.3.0',
        'mmdet>=3.2.0,<3.4.0',
        'mmpretrain>=1.2.0,<1.3.0',
        # mmengine imports pkg_resources for `mmseg::`-style base configs.
        'setuptools<81',
    ],
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
