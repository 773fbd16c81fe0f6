"""Sphinx configuration of the sciffusion documentation site.

Build it from the repository root with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The guides are Markdown (MyST), the API reference is generated from the docstrings (autodoc +
autosummary), and the tutorials in ``docs/tutorials`` run through sphinx-gallery in their fast mode.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import shutil
import sys
import tempfile
from importlib.metadata import version as _dist_version
from pathlib import Path

# The tutorials run as the tests run them: from the repository root on the import path.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

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

templates_path = ["_templates"]
# The docstrings write code and formulas in single backticks: show them as code.
default_role = "code"
autosummary_generate = True
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"



def _defining_module(package: str, name: str, obj: object) -> str | None:
    """The module under ``package`` whose source assigns ``name`` at top level (for re-exported data)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        module = importlib.import_module(info.name)
        if getattr(module, name, None) is not obj:
            continue
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return info.name
    return None


def _public_api(package: str) -> list[str]:
    """Where each name of a package's ``__all__`` is documented: the module that defines it."""
    pkg = importlib.import_module(package)
    names = []
    for name in getattr(pkg, "__all__", []):
        obj = getattr(pkg, name)
        if inspect.ismodule(obj):
            names.append(obj.__name__)
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            names.append(f"{obj.__module__}.{obj.__qualname__}")
        else:
            names.append(f"{_defining_module(package, name, obj) or package}.{name}")
    return names


def _packages(*roots: str) -> list[str]:
    """Every package under the documented roots, the roots included."""
    found = list(roots)
    for root in roots:
        for info in pkgutil.walk_packages(importlib.import_module(root).__path__, prefix=root + "."):
            if info.ispkg:
                found.append(info.name)
    return found


_API_ROOTS = ("sciffusion.core", "sciffusion.plugins.mri", "sciffusion.plugins.molecules", "sciffusion.plugins.climate")
# The package pages list their public names (``__all__``) and link each to the page of the module that
# defines it, so an object is documented once, where it lives, whatever subpackage that is.
autosummary_context = {"public_api": {name: _public_api(name) for name in _packages(*_API_ROOTS)}}

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
