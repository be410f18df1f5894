"""The distributed runtime of vhindex: Ray Data pipelines, Ray Train, Dask k-means/graph, Ray Serve.

It wraps the pure pieces of :mod:`vhindex` (stages, interfaces) and fans them out. Importing it
requires the ``[ray]`` and/or ``[dask]`` extras; the core never imports it at module level.
"""


def require(module: str, extra: str) -> None:
    """Raise an ImportError with the install hint when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"{module} is not installed; install it with: pip install -c constraints.txt 'vhindex[{extra}]'"
        )
