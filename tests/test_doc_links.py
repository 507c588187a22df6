"""Every relative link in the repository's tracked ``*.md`` files resolves:
the file or folder exists and a ``#anchor`` names a heading of the target
(GitHub's heading ids) or an explicit ``id`` / ``name``."""
import os.path as osp
import re
import subprocess
from urllib.parse import unquote

import pytest

from helpers import ROOT

FENCE = re.compile(r'^\s*(```|~~~)')
CODE_SPAN = re.compile(r'(`+).*?\1')
# [text](target) and ![alt](target), target without spaces, optional title
INLINE_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?'
                         r'(?:\s+"[^"]*")?\s*\)')
REFERENCE_DEF = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)')
HEADING = re.compile(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
HTML_ID = re.compile(r'<[^>]+\s(?:id|name)\s*=\s*["\']([^"\']+)["\']')
EXTERNAL = re.compile(r'^([a-zA-Z][a-zA-Z0-9+.-]*:|//)')


def tracked_markdown():
    try:
        out = subprocess.run(['git', 'ls-files', '-z', '--', '*.md'],
                             cwd=ROOT,
                             capture_output=True,
                             check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f'not a git checkout ({error})')
    return sorted(p for p in out.stdout.decode().split('\0') if p)


def prose_lines(text, keep_code=False):
    """The lines outside fenced code blocks, inline code removed (or only
    its backticks, with ``keep_code``)."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line.replace('`', '') if keep_code else CODE_SPAN.sub(
                '', line)


def github_anchor(heading):
    """GitHub's id for a heading: the text of its links and code, lower
    case, anything but word characters, spaces and hyphens dropped, spaces
    made hyphens."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    text = re.sub(r'<[^>]+>', '', text).strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path):
    """Every anchor a link may name in the Markdown file ``path``."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    seen, found = {}, set(HTML_ID.findall(text))
    for line in prose_lines(text, keep_code=True):
        match = HEADING.match(line)
        if match:
            base = github_anchor(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f'{base}-{count}')
    return found


def links(text):
    for line in prose_lines(text):
        yield from INLINE_LINK.findall(line)
        match = REFERENCE_DEF.match(line)
        if match:
            yield match.group(1)


def broken_links(relpath, root=ROOT):
    """``(target, why)`` for each relative link of the file ``relpath``
    under ``root`` that does not resolve."""
    path = osp.join(root, relpath)
    with open(path, encoding='utf-8') as f:
        text = f.read()
    broken = []
    for target in links(text):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition('#')
        file_part = unquote(file_part)
        if file_part.startswith('/'):
            resolved = osp.join(root, file_part.lstrip('/'))
        elif file_part:
            resolved = osp.normpath(osp.join(osp.dirname(path), file_part))
        else:
            resolved = path
        if not osp.exists(resolved):
            broken.append((target, 'no such file'))
        elif anchor and resolved.endswith('.md') and unquote(
                anchor).lower() not in anchors(resolved):
            broken.append((target, f'no heading #{anchor}'))
    return broken


@pytest.mark.parametrize('relpath', tracked_markdown())
def test_relative_links_resolve(relpath):
    assert broken_links(relpath) == []


def test_broken_links_are_found(tmp_path):
    """The checker itself: a missing file, a missing anchor (here and in
    another file) are reported; code, external links and good anchors are
    not."""
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'other.md').write_text(
        '# Other page\n\n## torch >= 2.6 and `mmengine`\n\n## Twice\n\n'
        '## Twice\n')
    (tmp_path / 'page.md').write_text(
        '# Page\n\n'
        '[ok](docs/other.md#torch--26-and-mmengine) [ok](#page) '
        '[ok](docs/other.md#twice-1) [ok](docs/) '
        '[ok](https://example.com/missing.md) `[code](missing.md)`\n\n'
        '```\n[fenced](missing.md)\n```\n\n'
        '[bad](missing.md) [bad](#nowhere) [bad](docs/other.md#twice-2)\n\n'
        '[ref]: docs/gone.md\n')
    assert broken_links('page.md', str(tmp_path)) == [
        ('missing.md', 'no such file'),
        ('#nowhere', 'no heading #nowhere'),
        ('docs/other.md#twice-2', 'no heading #twice-2'),
        ('docs/gone.md', 'no such file'),
    ]
