"""Mirror PeLK's arch record into ``checkpoint['meta']`` of training runs."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..checkpoint import add_arch_meta


@HOOKS.register_module()
class PeLKArchMetaHook(Hook):
    """Write ``checkpoint['meta']['pelk_arch'] = {module path: record}``.

    The state dict of every checkpoint records each PeLK's
    :meth:`~pelk_mm.PeLK.arch_record` in its metadata already (loading reads
    it from there); this hook also puts it in ``meta``, where people and
    tools look, for the checkpoints a Runner saves::

        custom_hooks = [dict(type='PeLKArchMetaHook')]
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        add_arch_meta(checkpoint, runner.model)
