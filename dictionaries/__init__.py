"""Dictionary models (VAEase, VAE, the papers' SAEs, the weighted SAE, modern TopK), their
metrics, save/load and the trainer. Pure tensors in, tensors out: no knowledge of models or text.

    import dictionaries as D
    config = D.make_config("vaease", d=512, n_latents=300)
    train, test = D.train_test_split(acts, 0.1)
    result = D.train({"vaease": config}, D.TensorBatchSource(train, 2048), "runs/x",
                     D.TrainConfig(), eval_source=D.TensorBatchSource(test, 2048, shuffle=False))
    model = D.load_dictionary("runs/x/vaease")
"""

# Architecture modules register themselves on import; a new architecture is one new file here.
from dictionaries import batchtopk, gated, jumprelu, matryoshka, sae, topk_aux, vae, wsae  # noqa: F401
from dictionaries.base import CannotExport, Dictionary, DictionaryConfig, LossTerms, SAELensExport
from dictionaries.data import BatchSource, TensorBatchSource, take_vectors, train_test_split
from dictionaries.io import FORMAT_VERSION, load_dictionary, save_dictionary
from dictionaries.metrics import ad_re_curve, evaluate, two_means_low_mask
from dictionaries.registry import REGISTRY, create, dictionary_class, make_config, register
from dictionaries.schedules import ScheduleConfig, learning_rate
from dictionaries.trainer import NonFiniteLossError, RunBusyError, TrainConfig, TrainResult, train, training_step
from dictionaries.weights import ESTIMATORS, estimate_weights, load_weights_file

__all__ = [
    "ESTIMATORS",
    "FORMAT_VERSION",
    "REGISTRY",
    "BatchSource",
    "CannotExport",
    "Dictionary",
    "DictionaryConfig",
    "LossTerms",
    "NonFiniteLossError",
    "RunBusyError",
    "SAELensExport",
    "ScheduleConfig",
    "TensorBatchSource",
    "TrainConfig",
    "TrainResult",
    "ad_re_curve",
    "create",
    "dictionary_class",
    "estimate_weights",
    "evaluate",
    "learning_rate",
    "load_dictionary",
    "load_weights_file",
    "make_config",
    "register",
    "save_dictionary",
    "take_vectors",
    "train",
    "train_test_split",
    "training_step",
    "two_means_low_mask",
]
