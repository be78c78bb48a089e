"""Process titles (what `ps` shows): setproctitle's C function, loaded
without its package.

The package's `__init__` imports `logging` only to report a missing C
module, and `logging` brings `threading`: both register at-fork hooks in
Python code, which every child the fork server forks then runs, touching
(and so copying) about 150 pages: 0.8 ms of CPU per job measured
(bench/PROFILE.md). The extension module itself needs nothing of the
package, so it is loaded from the package's directory by file; where that
fails (an unusual install), the package is imported as usual.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from typing import Callable

_MODULE = "setproctitle._setproctitle"


def _load() -> Callable[[str], None]:
    spec = importlib.util.find_spec("setproctitle")  # finds the package without importing it
    for directory in (spec.submodule_search_locations or []) if spec is not None else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "_setproctitle" + suffix)
            if os.path.exists(path):
                loader = importlib.machinery.ExtensionFileLoader(_MODULE, path)
                module_spec = importlib.util.spec_from_loader(_MODULE, loader)
                if module_spec is not None:
                    module = importlib.util.module_from_spec(module_spec)
                    loader.exec_module(module)
                    function: Callable[[str], None] = module.setproctitle
                    return function
    from setproctitle import setproctitle

    return setproctitle


set_title = _load()
