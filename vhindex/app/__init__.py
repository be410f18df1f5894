"""The entry layer: the ``vhindex`` command line (:mod:`vhindex.app.cli`), the demo
(:mod:`vhindex.app.demo`), what ``jobs/*.py`` call (:mod:`vhindex.app.jobs`) and the one module that
picks engines and executors (:mod:`vhindex.app.engines`).

This is the only part of ``vhindex`` that imports ``cluster`` (always lazily, inside functions): the
rest of the package is the pure core, which takes engines and executors as arguments.
"""
