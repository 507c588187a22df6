"""What the CPU benchmarks record about a run, and how they save it.

Every result is a dict whose ``run`` entry (:func:`run_record`) says when
and where it ran: the UTC start, the load average before and after (the
machine may be shared: compare ratios of one run), the CPU and the versions.
"""
import datetime
import json
import os
import os.path as osp
import platform
from typing import List, Optional, Tuple

import torch


def run_start() -> Tuple[datetime.datetime, Tuple[float, float, float]]:
    """``(UTC start time, load average)`` at the start of a run."""
    return datetime.datetime.now(datetime.timezone.utc), os.getloadavg()


def run_record(started: datetime.datetime, load_before: Tuple[float, ...],
               **fields) -> dict:
    """The ``run`` entry: start time, load average before and now, CPU,
    torch version, then ``fields`` (threads, rounds, other versions)."""
    return dict(
        utc=started.isoformat(timespec='seconds'),
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        cpu=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        torch=torch.__version__,
        **fields)


def with_run_line(lines: List[str], result: dict) -> str:
    """A Markdown table's ``lines``, then a line with the result's ``run``
    entry: the text a benchmark prints and saves."""
    return '\n'.join([*lines, '', f'- run: {json.dumps(result["run"])}'
                      ]) + '\n'


def save_result(result: dict,
                directory: str,
                stem: str,
                started: datetime.datetime,
                table: Optional[str] = None) -> str:
    """Write ``directory/<stem>_<UTC date-time>.json`` (and the Markdown
    ``table`` beside it as ``.md``); return the JSON file's path."""
    os.makedirs(directory, exist_ok=True)
    path = osp.join(directory, f'{stem}_{started.strftime("%Y-%m-%dT%H%M")}')
    with open(path + '.json', 'w') as out:
        json.dump(result, out, indent=1)
    if table is not None:
        with open(path + '.md', 'w') as out:
            out.write(table)
    return path + '.json'
