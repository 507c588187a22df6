"""Hide installed packages from this interpreter, as if only torch were there.

Python imports ``sitecustomize`` at start-up from ``sys.path``, so putting this
folder first on ``PYTHONPATH`` makes every interpreter started with it (and its
subprocesses) behave like a plain PyTorch environment::

    PYTHONPATH=tests/torch_only:. python -c "import pelk_mm.ops"

Every finder on ``sys.meta_path`` is wrapped so that it does not find the
hidden top-level packages (and their submodules): ``import mmengine`` raises
``ModuleNotFoundError: No module named 'mmengine'`` and
``importlib.util.find_spec('mmengine')`` returns None, exactly as when the
package is not installed. ``PELK_MM_HIDE`` (comma-separated) replaces the
default list, e.g. ``PELK_MM_HIDE=mmcv`` for an OpenMMLab install that lacks
mmcv.
"""
import os
import sys

HIDDEN = frozenset(
    os.environ.get('PELK_MM_HIDE',
                   'mmengine,mmcv,mmseg,mmdet,mmpretrain,PIL').split(','))


class HidingFinder:
    """A meta-path finder that finds what ``finder`` finds, minus HIDDEN."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, attr)


sys.meta_path[:] = [HidingFinder(finder) for finder in sys.meta_path]
