#!/usr/bin/env bash
# Lint the whole tree: flake8, then isort and yapf as checks (diffs printed,
# nothing rewritten). Exits non-zero on any finding. Settings: setup.cfg.
# Usage: bash tools/lint.sh   (PYTHON selects the interpreter; default:
# .venv/bin/python if present). The linters must be installed there
# (tools/setup_env.sh installs the versions pinned in
# requirements/latest.txt).
# To fix the formatting instead: isort . && yapf -i -r -p .
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
EXCLUDES=(.venv .venv-canonical build work_dirs data checkpoints)

status=0
echo "== flake8"
"$PYTHON" -m flake8 . || status=1
echo "== isort --check-only --diff"
"$PYTHON" -m isort --check-only --diff . || status=1
echo "== yapf --diff -r"
yapf_excludes=()
for dir in "${EXCLUDES[@]}"; do yapf_excludes+=(-e "$dir" -e "$dir/*"); done
"$PYTHON" -m yapf --diff -r -p "${yapf_excludes[@]}" . || status=1
if [ "$status" -ne 0 ]; then
    echo "lint: findings above (fix with: isort . && yapf -i -r -p .)" >&2
else
    echo "lint: clean"
fi
exit "$status"
