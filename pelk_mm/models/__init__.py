from .pelk import PeLK, PeLKBlock

__all__ = ['PeLK', 'PeLKBlock']
