"""Sphinx configuration of the sciffusion documentation site.

Build it from the repository root with ``python -m sphinx -W -b html docs docs/_build/html``.
The guides are Markdown (MyST), the API reference is generated from the docstrings (autodoc +
autosummary), and the tutorials in ``docs/tutorials`` run through sphinx-gallery in their fast mode.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.metadata import version as _dist_version
from pathlib import Path

project = "sciffusion"
author = "the sciffusion developers"
copyright = "sciffusion developers"
release = _dist_version("sciffusion")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "tutorials/README.rst", "**/_out"]
myst_heading_anchors = 3
# The plugins re-export their main classes, so a type name can resolve to two documented objects; the
# configuration holds functions (the gallery hooks), which Sphinx cannot pickle: neither is a defect.
suppress_warnings = ["ref.python", "config.cache"]

autosummary_generate = True
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"

html_theme = "pydata_sphinx_theme"
html_title = "sciffusion"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}

# The tutorials write their figures into an output folder (they are plain programs: `--out DIR`);
# the gallery runs each in its fast mode and shows the PNGs it wrote, with everything it printed.
_TUTORIAL_OUT = Path(os.environ.get("SCIFFUSION_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="sciffusion-tutorials-"))


def _tutorial_argv(gallery_conf: dict, script_vars: dict) -> list[str]:
    """Command line of a tutorial in the docs build: its fast mode, writing into its own folder."""
    return ["--fast", "--out", str(_TUTORIAL_OUT / Path(script_vars["src_file"]).stem)]


def _tutorial_figures(block, block_vars: dict, gallery_conf: dict) -> str:
    """sphinx-gallery image scraper: the PNGs that the tutorial wrote into its output folder."""
    from sphinx_gallery.scrapers import figure_rst

    out = _TUTORIAL_OUT / Path(block_vars["src_file"]).stem
    written = sorted(out.glob("*.png")) if out.is_dir() else []
    paths = []
    for png, target in zip(written, block_vars["image_path_iterator"]):
        shutil.copyfile(png, target)
        paths.append(target)
    return figure_rst(paths, gallery_conf["src_dir"])


sphinx_gallery_conf = {
    "examples_dirs": "tutorials",
    "gallery_dirs": "auto_tutorials",
    "filename_pattern": r"\.py$",
    "reset_argv": _tutorial_argv,
    "image_scrapers": (_tutorial_figures,),
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}
