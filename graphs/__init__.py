"""Request → Dask task graph builders (installed as ``mooncake.graphs``).

One module per serving mode; depends on ``mooncake``, never the reverse.
"""
