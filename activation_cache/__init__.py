"""Where text meets the model: corpora, packing, the harvest loop, the activation store and its readers."""

from .batches import ShuffledBatches
from .corpus import BUILTIN_PYDOC, CorpusError, CorpusSpec, iter_documents
from .harvest import HarvestConfig, harvest
from .harvest_guards import HarvestError
from .hooks import HookError
from .models import BUILTIN_SMOLLM2, LanguageModel, ModelLoadError, load_model
from .reader import ActivationStats, ActivationStore, ShardIntegrityError, ShardTokens, Split, SplitChunk, TokenRecord
from .store_format import FORMAT_VERSION, Manifest, StoreFormatError
from .vector_codec import EncodedVectors

__all__ = [
    "BUILTIN_PYDOC",
    "BUILTIN_SMOLLM2",
    "FORMAT_VERSION",
    "ActivationStats",
    "ActivationStore",
    "CorpusError",
    "CorpusSpec",
    "EncodedVectors",
    "HarvestConfig",
    "HarvestError",
    "HookError",
    "LanguageModel",
    "Manifest",
    "ModelLoadError",
    "ShardIntegrityError",
    "ShardTokens",
    "ShuffledBatches",
    "Split",
    "SplitChunk",
    "StoreFormatError",
    "TokenRecord",
    "harvest",
    "iter_documents",
    "load_model",
]
