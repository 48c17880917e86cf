"""The Arrow feature cache: frozen SAM2 pyramids (compact form), ground truth per view, log-mel and text
embeddings, memory-mapped for random access. See `feature_cache.schema` for the folder layout.

Public API:

* `CacheSettings` (what to build / expect), `build_cache` (plain-Python build), `cache_is_current`;
* `CacheReader` (`.frame`, `.clip`, `.compact`, `.keys`, `.records`), `ClipFeatures`;
* `verify_cache` -> `VerifyReport`; `cache_size`, `predict_size`;
* errors: `CacheError`, `StaleCacheError`, `CorruptCacheError`.

The Prefect flow and the `auralsam2 cache` commands live in `flows/cache.py` (`run_cache`).
"""

from feature_cache.build import CacheSummary, build_cache, cache_is_current
from feature_cache.reader import CacheReader, ClipFeatures, ExpressionFeatures
from feature_cache.schema import CacheError, CacheSettings, CorruptCacheError, StaleCacheError
from feature_cache.size import cache_size, predict_size
from feature_cache.verify import VerifyReport, verify_cache

__all__ = [
    "CacheError",
    "CacheReader",
    "CacheSettings",
    "CacheSummary",
    "ClipFeatures",
    "CorruptCacheError",
    "ExpressionFeatures",
    "StaleCacheError",
    "VerifyReport",
    "build_cache",
    "cache_is_current",
    "cache_size",
    "predict_size",
    "verify_cache",
]
