"""For runs on the lent GPU machine only (never imported by the studio): TransformerLens imports
packages at import time that the studio's core never calls (datasets, pandas, wandb, ...) and that
the GPU image lacks and are too big to carry. This installs import stubs for those that are missing,
so `import transformer_lens` works there; any real use of a stub raises at once.

Use: `python -c "import benchmarks.device.stub_missing"` first, or `python -m benchmarks.device.run ...`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

CANDIDATES = ["datasets", "pandas", "pyarrow", "wandb", "beartype", "typeguard", "fancy_einsum",
              "transformers_stream_generator", "lit_nlp", "multiprocess", "xxhash"]


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is an import stub on this machine (the package is not installed)")

    def __mro_entries__(self, bases):
        return (object,)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


MISSING = [name for name in CANDIDATES if importlib.util.find_spec(name) is None]
if MISSING:
    sys.meta_path.append(_Finder(MISSING))
