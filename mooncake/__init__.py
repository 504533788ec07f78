"""mooncake: KVCache-centric, prefill/decode-disaggregated LLM serving on Dask."""

__version__ = "0.1.0"
