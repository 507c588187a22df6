"""Reading checkpoint files: weights only, hash-checked URLs, clear errors.

:func:`read_checkpoint` is how pelk-mm reads every checkpoint it loads itself
(the backbone's ``init_cfg=dict(type='Pretrained')``, the tools, the
converter): local paths, ``http(s)://`` URLs and ``s3://`` / ``petrel://``
(mmengine's file backends) are read

- **weights only**: tensors, containers, primitive types and mmengine's own
  checkpoint objects (:data:`MMENGINE_CHECKPOINT_GLOBALS`: the message hub's
  ``HistoryBuffer`` and its numpy arrays) on every torch (``safe_globals``
  from torch 2.5, a restricted unpickler before); anything else pickled is
  refused with ``pickle.UnpicklingError`` naming it;
- **hash-checked** when downloaded: into the torch hub cache as torch.hub
  does, and a name ``<stem>-<hex>.<ext>`` (a released file:
  ``name_YYYYMMDD-<sha256[:8]>.pth``) must prefix the file's sha256
  (``RuntimeError: invalid hash value``, nothing left in the cache);
- with **clear errors**: a local file that is truncated or not a checkpoint
  raises :class:`UnreadableCheckpoint` naming it (torch's own error advises
  ``weights_only=False``, which no unpickler can help).

:func:`use_safe_url_loader` is the explicit switch that makes mmengine's
``http://`` / ``https://`` loader (``load_from``, ``--resume``, any model's
``Pretrained``) read the same way; pelk-mm's ``tools/train.py`` and
``tools/test.py`` turn it on, importing :mod:`pelk_mm` does not.
"""
import codecs
import io
import os
import os.path as osp
import pickle
import re
import types
import zipfile
from typing import Any, Optional
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

#: Schemes :func:`read_checkpoint` reads besides local paths.
URL_SCHEMES = ('http://', 'https://')
#: mmengine's file-backend schemes (optionally behind ``<backend>:``).
FILE_BACKEND_SCHEME = re.compile(r'(\S+:)?(s3|petrel)://')
# torch.hub's: the hex digits after the last '-' of a file name
_HASH_IN_NAME = re.compile(r'-([a-f0-9]*)\.')
# torch's message when weights_only refuses an object of a readable file
_REFUSED_OBJECT = 'Unsupported global'


class UnreadableCheckpoint(ValueError):
    """A checkpoint file is truncated or not a checkpoint."""


def _numpy_globals() -> list:
    """Numpy callables and classes that pickled arrays, dtypes, scalars use."""
    try:  # numpy >= 2 moved the private module
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    dtype_classes = {
        type(np.dtype(name))
        for name in ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8',
                     'float16', 'float32', 'float64')
    }
    return [
        multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
        *sorted(dtype_classes, key=lambda t: t.__name__)
    ]


#: What an mmengine checkpoint pickles besides tensors and containers: the
#: message hub's ``HistoryBuffer`` (numpy arrays, its statistics pickled as
#: bound methods, ``getattr(buffer, 'mean')``).
MMENGINE_CHECKPOINT_GLOBALS = [HistoryBuffer, getattr, *_numpy_globals()]


class _Foreign:
    """A class no weights-only unpickler allows."""


def _torch_load_defaults_to_weights_only() -> bool:
    """Whether a plain ``torch.load`` refuses a foreign pickled object."""
    buffer = io.BytesIO()
    torch.save(_Foreign(), buffer)
    buffer.seek(0)
    try:
        torch.load(buffer)
    except pickle.UnpicklingError:
        return True
    return False


#: torch >= 2.6: ``torch.load`` (so mmengine's loaders) is weights-only by
#: default. Before, it unpickles anything.
TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT = _torch_load_defaults_to_weights_only()

# Python 2 names in protocol 2 pickles -> Python 3 names (pickle's own table)
_PY2_NAMES = pickle._compat_pickle.NAME_MAPPING
_PY2_MODULES = pickle._compat_pickle.IMPORT_MAPPING


def _restricted_pickle_module():
    """A ``pickle_module`` for ``torch.load`` on torch < 2.5 (no
    ``safe_globals``): torch's weights-only globals plus
    :data:`MMENGINE_CHECKPOINT_GLOBALS`, anything else refused."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = dict(_get_allowed_globals())
    for obj in MMENGINE_CHECKPOINT_GLOBALS:
        module = obj.__module__
        names = [module]
        if module.startswith(('numpy.core.', 'numpy._core.')):
            tail = module.split('.', 2)[-1]  # saved by numpy 1 or 2
            names = [f'numpy.core.{tail}', f'numpy._core.{tail}']
        for name in names:
            allowed[f'{name}.{obj.__qualname__}'] = obj
    # numpy arrays pickle their bytes as _codecs.encode(str, 'latin1'), as
    # torch >= 2.6's weights-only unpickler allows
    allowed['_codecs.encode'] = codecs.encode

    class Unpickler(pickle.Unpickler):

        def find_class(self, module, name):
            # protocol 2 (torch.save's) names Python 3 modules by their
            # Python 2 names (``__builtin__``), as pickle.Unpickler maps them
            module, name = _PY2_NAMES.get((module, name), (module, name))
            module = _PY2_MODULES.get(module, module)
            try:
                return allowed[f'{module}.{name}']
            except KeyError:
                raise pickle.UnpicklingError(
                    f'{_REFUSED_OBJECT} GLOBAL {module}.{name}: not a '
                    'tensor, container or mmengine checkpoint object'
                ) from None

    module = types.ModuleType('pelk_mm_weights_only')
    module.Unpickler = Unpickler
    module.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()
    return module


def _torch_load_weights_only(file, map_location=None) -> Any:
    """``torch.load`` weights only, mmengine's own globals allowed."""
    if hasattr(torch.serialization, 'safe_globals'):
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
            return torch.load(
                file, map_location=map_location, weights_only=True)
    return torch.load(
        file,
        map_location=map_location,
        pickle_module=_restricted_pickle_module(),
        weights_only=False)


def _is_intact_zip(path: str) -> bool:
    """Whether ``path`` is a complete zip archive (torch's file format)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def is_unreadable(path: str, error: Exception) -> bool:
    """Whether ``error`` of loading ``path`` means the file is unreadable.

    Only errors of reading the bytes count (``OSError`` / ``EOFError``, an
    unpickling error other than a refused object, torch's zip reader's
    ``RuntimeError``), and only for a local file that is not a complete zip
    archive.
    """
    if isinstance(error, RuntimeError):
        readable = 'PytorchStreamReader' not in str(error)
    elif isinstance(error, pickle.UnpicklingError):
        readable = _REFUSED_OBJECT in str(error)
    else:
        readable = not isinstance(error, (OSError, EOFError))
    if readable or not osp.isfile(path):
        return False
    return not _is_intact_zip(path)


def unreadable_error(path: str) -> UnreadableCheckpoint:
    """The :class:`UnreadableCheckpoint` for ``path``."""
    return UnreadableCheckpoint(
        f'{path} ({osp.getsize(path)} bytes) is not a readable checkpoint: '
        'it is truncated (e.g. a partial download) or not a checkpoint at '
        'all. Download or save it again.')


def _read_local(path: str, map_location, trust_pickle: bool) -> Any:
    path = osp.expanduser(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} can not be found.')
    try:
        if trust_pickle:
            return torch.load(
                path, map_location=map_location, weights_only=False)
        return _torch_load_weights_only(path, map_location)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        if is_unreadable(path, e):
            raise unreadable_error(path) from None
        raise


def download(url: str, model_dir: Optional[str] = None) -> str:
    """Download ``url`` into the torch hub cache, hash-checked; its path.

    As ``torch.hub.load_state_dict_from_url(check_hash=True)``: the cache is
    ``model_dir`` (default ``$TORCH_HOME/hub/checkpoints``), a cached file is
    not downloaded again, and the hex digits after the last ``-`` of the
    file name (if any) must prefix its sha256. In distributed runs local rank
    0 downloads first.

    Raises:
        RuntimeError: ``invalid hash value``; nothing is left in the cache.
    """
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    path = osp.join(model_dir, osp.basename(urlparse(url).path))

    def fetch():
        if not osp.exists(path):
            match = _HASH_IN_NAME.search(osp.basename(path))
            torch.hub.download_url_to_file(
                url,
                path,
                hash_prefix=match.group(1) if match else None,
                progress=False)

    rank, world_size = get_dist_info()
    if rank == 0:
        fetch()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            fetch()
    return path


def read_checkpoint(filename: str,
                    map_location: Any = 'cpu',
                    trust_pickle: bool = False) -> Any:
    """Read a checkpoint: a local path or a URL, weights only.

    Args:
        filename (str): A local path (``~`` expanded), an ``http(s)://`` URL
            (downloaded by :func:`download`, hash-checked) or an ``s3://`` /
            ``petrel://`` path (mmengine's file backends).
        map_location: As :func:`torch.load`. Defaults to 'cpu'.
        trust_pickle (bool): Unpickle anything (only for a trusted local
            file). Defaults to False.

    Returns:
        The loaded object (a checkpoint dict or a bare state dict).

    Raises:
        FileNotFoundError: No such local file.
        UnreadableCheckpoint: The file is truncated or not a checkpoint.
        pickle.UnpicklingError: It pickles an object other than tensors,
            containers and :data:`MMENGINE_CHECKPOINT_GLOBALS`.
        RuntimeError: A download's sha256 does not start with the hash in its
            name (``invalid hash value``).
        ValueError: Another scheme (``open-mmlab://``, ``torchvision://``,
            ...), ``trust_pickle`` with a URL.
    """
    remote = filename.startswith(URL_SCHEMES)
    backend = FILE_BACKEND_SCHEME.match(filename)
    if trust_pickle and (remote or backend):
        raise ValueError(f'{filename}: trust_pickle reads local files only; '
                         'download the file first.')
    if remote:
        return _read_local(download(filename), map_location, False)
    if backend:
        data = get_file_backend(
            filename, backend_args=dict(backend='petrel')).get(filename)
        with io.BytesIO(data) as buffer:
            return _torch_load_weights_only(buffer, map_location)
    if re.match(r'[a-zA-Z][\w+.-]*://', filename):
        raise ValueError(
            f'{filename}: pelk-mm reads local paths, http(s):// URLs and '
            's3:// / petrel:// paths; download the file and give its path.')
    return _read_local(filename, map_location, trust_pickle)


def load_from_url_safely(filename: str, map_location=None) -> Any:
    """mmengine ``http(s)://`` scheme loader: :func:`read_checkpoint`."""
    return read_checkpoint(filename, map_location)


def use_safe_url_loader() -> None:
    """Make mmengine read ``http://`` / ``https://`` checkpoints as
    :func:`read_checkpoint` does: hash-checked, weights only.

    Replaces mmengine's loader of these schemes (``check_hash=False``,
    ``weights_only=False``) for every model of the process: ``load_from``,
    ``--resume``, ``init_cfg=dict(type='Pretrained', checkpoint=URL)``.
    A URL whose name has ``-<hex>.`` that is not its sha256 prefix (e.g.
    ``resnet-224.pth``) is then refused. Idempotent.
    """
    CheckpointLoader.register_scheme(
        URL_SCHEMES, load_from_url_safely, force=True)
