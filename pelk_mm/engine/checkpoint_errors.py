"""A clear error for a checkpoint file that cannot be read at all.

A truncated file (e.g. a partial download) or one that is not a checkpoint
(an HTML error page saved as ``.pth``) makes ``torch.load`` fail with
``OSError: [Errno 22] Invalid argument``, an ``EOFError`` without message,
or ``Weights only load failed ... Re-running torch.load with weights_only set
to False will likely succeed``, which advises the unsafe option for a file
that no unpickler can read. :func:`patch_checkpoint_read_errors` wraps every
mmengine ``CheckpointLoader`` scheme so that such a local file raises
:class:`UnreadableCheckpoint` naming the path. A readable file whose content
is refused (an object ``weights_only`` does not allow) keeps torch's error.
"""
import functools
import os.path as osp
import pickle
import zipfile

from mmengine.runner import CheckpointLoader

# torch's message when weights_only refuses an object of a readable file
_REFUSED_OBJECT = 'Unsupported global'


class UnreadableCheckpoint(ValueError):
    """A checkpoint file is truncated or not a checkpoint."""


def _is_intact_zip(path: str) -> bool:
    """Whether ``path`` is a complete zip archive (torch's file format)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _unreadable(path: str, error: Exception) -> bool:
    """Whether ``error`` of loading ``path`` means the file is unreadable.

    Only errors of reading the bytes count: ``OSError`` / ``EOFError``,
    an unpickling error other than a refused object, torch's zip reader's
    ``RuntimeError``; and only for a local file that is not a complete zip
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


def _with_read_errors(loader):
    """Wrap one checkpoint loader with :class:`UnreadableCheckpoint`."""
    if getattr(loader, '_pelk_mm_read_errors', False):
        return loader

    @functools.wraps(loader)  # keeps __name__, which mmengine logs
    def load(filename, *args, **kwargs):
        try:
            return loader(filename, *args, **kwargs)
        except (OSError, EOFError, RuntimeError,
                pickle.UnpicklingError) as error:
            if not _unreadable(filename, error):
                raise
            raise UnreadableCheckpoint(
                f'{filename} ({osp.getsize(filename)} bytes) is not a '
                'readable checkpoint: it is truncated (e.g. a partial '
                'download) or not a checkpoint at all. Download or save it '
                'again.') from None

    load._pelk_mm_read_errors = True
    return load


def patch_checkpoint_read_errors() -> None:
    """Give every mmengine checkpoint scheme :class:`UnreadableCheckpoint`.

    Idempotent; :mod:`pelk_mm` applies it on import.
    """
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        CheckpointLoader.register_scheme(
            prefix, _with_read_errors(loader), force=True)
