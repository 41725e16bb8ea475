"""mousai_runtime: run a mousai bundle with numpy + ONNX Runtime (no torch).

    from mousai_runtime import Pipeline
    audio = Pipeline("engines/default").generate("calm ambient pads", seconds=10, seed=0)   # float32 [2, N]
"""
from .bundle import Bundle, BundleError
from .backends import BackendError
from .host import HostRenderer
from .pipeline import Cancelled, CancelToken, Fp16FallbackWarning, InputError, Pipeline
from .sampling import NonFiniteError

__all__ = ["Pipeline", "HostRenderer", "Bundle", "BundleError", "BackendError", "InputError", "Cancelled",
           "CancelToken", "NonFiniteError", "Fp16FallbackWarning"]
