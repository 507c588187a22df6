"""benchmarks/bench_peripheral_conv.py refuses a method it cannot time
(``--methods triton`` without Triton once timed the 7x7 under that name)."""
import os
import sys

import pytest

from pelk_mm.ops import PERIPHERAL_CONV_IMPLS
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import bench_peripheral_conv  # noqa: E402


def test_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench_peripheral_conv.parse_args(['--methods', 'fft', 'bogus'])
    err = capsys.readouterr().err
    assert '--methods bogus: not an implementation here' in err
    assert ', '.join(sorted(PERIPHERAL_CONV_IMPLS)) in err


def test_known_methods_are_kept():
    args = bench_peripheral_conv.parse_args(['--methods', 'fft', 'dense'])
    assert args.methods == ['fft', 'dense']
