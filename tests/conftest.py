"""Fixtures every test module shares."""
import copy

import pytest
from mmengine.registry import DefaultScope


@pytest.fixture(scope='module', autouse=True)
def restore_default_scope():
    """Leave mmengine's default scope as each test module found it.

    The tools and the Runner set it for the config they build
    (``init_default_scope``); a module that leaves 'mmseg' current would make
    the next module's mmpretrain builds look in the wrong registry, so the
    suite would pass or fail by test order.
    """
    saved = copy.copy(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict = saved
