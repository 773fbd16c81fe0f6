"""Run the ```python code blocks of a markdown page, in order, in one namespace.

Docs pages promise that their examples run as written; the tests of each page call
`run_markdown_examples` so that a page whose code rots turns CI red.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: str | Path) -> list[str]:
    """Return the source of every ```python block of a markdown page (path relative to the repo)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return _BLOCK.findall(text)


def run_markdown_examples(page: str | Path, workdir: Path, env: dict | None = None) -> dict:
    """Execute the page's python blocks in order inside `workdir`; return the final namespace.

    A failing block raises with the page name and the block number, so a broken example is easy to find.
    """
    blocks = python_blocks(page)
    if not blocks:
        raise AssertionError(f"{page} has no ```python blocks to run")
    namespace: dict = {"__name__": "__doc_example__"}
    old_cwd = os.getcwd()
    old_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    os.chdir(workdir)
    try:
        for i, src in enumerate(blocks, 1):
            try:
                exec(compile(src, f"{page}[block {i}]", "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"{page}: python block {i} failed: {err!r}") from err
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return namespace
