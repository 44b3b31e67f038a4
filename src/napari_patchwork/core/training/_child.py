"""The training process's entry point: ``python -m napari_patchwork.core.training._child``.

A module of its own, imported by nothing: ``-m`` on ``process`` itself would run a second copy
of a module the package has already imported.
"""

from napari_patchwork.core.training.process import serve

if __name__ == "__main__":  # (pytest's doctest collection imports every module)
    serve()
