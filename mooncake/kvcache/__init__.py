"""KV metadata: block hashing, block bookkeeping and the exported block payload."""

from mooncake.kvcache.block import KVBlock, KVBlockSpec, KVExport
from mooncake.kvcache.block_pool import Block, BlockEvent, BlockPool, NoFreeBlocksError
from mooncake.kvcache.hashing import block_keys, hash_block, root_key

__all__ = [
    "Block",
    "BlockEvent",
    "BlockPool",
    "KVBlock",
    "KVBlockSpec",
    "KVExport",
    "NoFreeBlocksError",
    "block_keys",
    "hash_block",
    "root_key",
]
