"""Run megatron-core on a CPU-only torch: redirect the few CUDA-only call sites it reaches to the CPU.

megatron-core 0.16 assumes a GPU in a handful of places on the training path (``tests/megatron/test_cpu_shim.py``
guards the list against megatron-core upgrades): it allocates buffers with ``device=torch.cuda.current_device()``
or ``device="cuda"``, seeds and forks the tensor-parallel RNG through ``torch.cuda.get_rng_state``, compares
``param.type()`` with ``"torch.cuda.FloatTensor"`` when it builds the optimizer, and calls ``torch.cuda.synchronize()``
around checkpoint writes. On a CPU-only torch each of these raises (or, for ``torch.cuda.manual_seed``/
``set_rng_state``, silently queues a call that never runs).

:func:`apply` redirects exactly those, once per process, and only when CUDA is unavailable:

1. ``torch.cuda.current_device`` returns ``torch.device("cpu")``; ``synchronize``, ``reset_peak_memory_stats`` are
   no-ops; ``Stream()``, ``current_stream``/``default_stream`` return a null stream, ``stream(s)`` is a no-op
   context and ``Event()`` a null event (the MoE all-to-all dispatcher stages its device-to-host copies on a side
   stream; on the CPU all work is synchronous).
2. The tensor-parallel RNG tracker runs on the CPU generator: ``torch.cuda.get_rng_state``/``set_rng_state``/
   ``manual_seed`` and megatron's ``_get_cuda_rng_state``/``_set_cuda_rng_state`` read and write the default CPU
   generator. ``torch.cuda.manual_seed_all`` is left alone: ``torch.manual_seed`` calls it (a lazy no-op on CPU),
   and pointing it at the CPU generator would recurse.
3. A torch-function mode, entered on the calling thread, maps ``device="cuda"`` (any CUDA device, or an int index) in
   factory calls and ``Tensor.cuda()``/``Tensor.to("cuda")`` to the CPU, drops ``pin_memory=True``, and makes an
   argument-less ``Tensor.type()`` of a CPU tensor report the CUDA type name (``torch.cuda.FloatTensor``), which is
   what the optimizer's string checks expect. Autograd's CPU backward runs on the calling thread, so the mode covers
   it too. Threads that megatron code runs on must call :func:`apply` themselves.

4. :func:`define_missing_te_symbols` (also called by the model builder on GPUs without transformer-engine): the MoE
   router's gating GEMM tests ``te_general_gemm is not None``, a name megatron-core 0.16 defines only when TE
   imports, so without TE every MoE forward raises ``NameError``; the shim defines it as ``None`` (the torch path).

5. The MoE all-to-all dispatcher hands its split sizes to ``all_to_all_single`` after
   ``maybe_move_tensor_to_cpu(..., as_numpy=True)``, which converts only *CUDA* tensors to numpy; a CPU tensor stays
   a tensor and ``all_to_all_single`` rejects it (expert parallelism on gloo). The shim's version also converts CPU
   tensors when ``as_numpy`` is asked for (in ``moe_utils`` and in ``token_dispatcher``, which imported the name).

Every redirected function raises (or is a silent no-op) on a CPU-only torch, so the shim changes no behaviour that
worked before it. :func:`verify_assumptions` checks what the shim relies on in megatron-core and returns the broken
assumptions; ``tests/megatron/test_cpu_shim.py`` fails with that list after a megatron-core upgrade. On a machine with
CUDA :func:`apply` does nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import re
import threading
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

__all__ = [
    "apply",
    "is_applied",
    "verify_assumptions",
    "define_missing_te_symbols",
    "CUDA_API_ON_TRAINING_PATH",
    "TRAINING_PATH_MODULES",
]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_applied_threads: set[int] = set()
_patched = False

# The megatron-core modules that models, DDP, the optimizers, the schedules and dist-checkpointing run through.
TRAINING_PATH_MODULES = (
    "tensor_parallel/random.py",
    "tensor_parallel/layers.py",
    "tensor_parallel/mappings.py",
    "tensor_parallel/cross_entropy.py",
    "tensor_parallel/utils.py",
    "utils.py",
    "parallel_state.py",
    "transformer/utils.py",
    "transformer/attention.py",
    "transformer/dot_product_attention.py",
    "transformer/transformer_block.py",
    "transformer/transformer_layer.py",
    "transformer/mlp.py",
    "transformer/module.py",
    "transformer/moe/experts.py",
    "transformer/moe/moe_layer.py",
    "transformer/moe/moe_utils.py",
    "transformer/moe/router.py",
    "transformer/moe/token_dispatcher.py",
    "transformer/moe/shared_experts.py",
    "fusions/fused_softmax.py",
    "fusions/fused_bias_dropout.py",
    "distributed/param_and_grad_buffer.py",
    "distributed/distributed_data_parallel.py",
    "distributed/finalize_model_grads.py",
    "optimizer/__init__.py",
    "optimizer/optimizer.py",
    "optimizer/distrib_optimizer.py",
    "optimizer/clip_grads.py",
    "optimizer/grad_scaler.py",
    "optimizer_param_scheduler.py",
    "pipeline_parallel/schedules.py",
    "pipeline_parallel/p2p_communication.py",
    "dist_checkpointing/serialization.py",
    "dist_checkpointing/tensor_aware_state_dict.py",
    "dist_checkpointing/strategies/async_utils.py",
    "dist_checkpointing/strategies/filesystem_async.py",
    "dist_checkpointing/strategies/fully_parallel.py",
    "dist_checkpointing/strategies/state_dict_saver.py",
    "dist_checkpointing/strategies/torch.py",
    "models/gpt/gpt_model.py",
    "models/common/language_module/language_module.py",
    "models/common/embeddings/rotary_pos_embedding.py",
)

# Every ``torch.cuda.<name>`` that TRAINING_PATH_MODULES mention, and why it is fine on a CPU. A name that is not
# listed here makes the shim test fail: a megatron-core upgrade started using a CUDA API this shim has not reviewed.
CUDA_API_ON_TRAINING_PATH = {
    "current_device": "redirected to torch.device('cpu')",
    "synchronize": "redirected to a no-op",
    "current_stream": "redirected to a null stream (megatron-core >= 0.19 calls it on the default path)",
    "default_stream": "redirected to a null stream",
    "get_rng_state": "redirected to the CPU generator",
    "set_rng_state": "redirected to the CPU generator",
    "manual_seed": "redirected to the CPU generator",
    "random": "torch.cuda.random.get_rng_state is only reached through _get_cuda_rng_state, which is redirected",
    "default_generators": "only reached through _get/_set_cuda_rng_state (redirected) or cudagraph RNG (unused)",
    "CUDAGraph": "cudagraph-safe RNG only; use_cudagraphable_rng stays False",
    "FloatTensor": "string comparisons with Tensor.type(); the torch-function mode reports CUDA names",
    "HalfTensor": "string comparisons with Tensor.type(); the torch-function mode reports CUDA names",
    "BFloat": "string comparisons with Tensor.type(); the torch-function mode reports CUDA names",
    "amp": "custom_fwd/custom_bwd decorators, which work on CPU",
    "empty_cache": "a no-op on a CPU-only torch",
    "is_available": "returns False, which megatron handles",
    "device_count": "returns 0; async_utils only uses it for persistent CUDA workers (unused)",
    "set_device": "persistent async checkpoint workers only (not used: saves are synchronous)",
    "Stream": "redirected to the null stream (the MoE all-to-all dispatcher creates one for its D2H copies)",
    "stream": "redirected to a context manager that does nothing",
    "Event": "redirected to a null event (work on the CPU is synchronous)",
    "OutOfMemoryError": "exception class in an except clause; never raised on CPU",
    "nvtx": "only when nvtx ranges are enabled (they are not)",
    "clock_rate": "StragglerDetector only",
    "power_draw": "StragglerDetector only",
    "temperature": "StragglerDetector only",
    "utilization": "StragglerDetector only",
}

# Modules whose ``maybe_move_tensor_to_cpu`` the shim replaces (the definition and the dispatcher's imported name).
_MOE_SPLIT_HELPER_MODULES = (
    "megatron.core.transformer.moe.moe_utils",
    "megatron.core.transformer.moe.token_dispatcher",
)

# (module, attribute) that the shim replaces in megatron-core.
_MEGATRON_RNG_FUNCTIONS = (
    ("megatron.core.tensor_parallel.random", "_get_cuda_rng_state"),
    ("megatron.core.tensor_parallel.random", "_set_cuda_rng_state"),
)


class _NullStream:
    """Stands in for a CUDA stream on the CPU: work is synchronous, so every method is a no-op.

    All null streams compare equal: there is one (synchronous) stream on a CPU, so code that asks "am I on a side
    stream?" (``current_stream() != side_stream``) gets "no".
    """

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __eq__(self, other) -> bool:
        return isinstance(other, _NullStream)

    def __hash__(self) -> int:
        return 0

    def wait_stream(self, stream) -> None:
        return None

    def wait_event(self, event) -> None:
        return None

    def record_event(self, event=None):
        return event if event is not None else _NullEvent()

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class _NullEvent:
    """Stands in for a CUDA event on the CPU."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, stream=None) -> None:
        return None

    def wait(self, stream=None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True


_NULL_STREAM = _NullStream()
_CPU = torch.device("cpu")


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":", 1)[0] == "cuda"
    # A bare int is a CUDA index in torch's API; on a CPU-only torch it cannot name anything else.
    return isinstance(device, int) and not isinstance(device, bool)


_TENSOR_TYPE = torch.Tensor.type
_TENSOR_CUDA = torch.Tensor.cuda
_TENSOR_TO = torch.Tensor.to


class _CudaToCpuMode(TorchFunctionMode):
    """Maps CUDA placement requests to the CPU and reports CUDA type names for ``Tensor.type()``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _TENSOR_CUDA:
            return args[0]
        if func is _TENSOR_TYPE and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": _CPU}
        if kwargs.get("pin_memory"):
            kwargs = {**kwargs, "pin_memory": False}
        if func is _TENSOR_TO and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


def _cpu_get_rng_state(*args, **kwargs) -> torch.Tensor:
    return torch.default_generator.get_state()


def _cpu_set_rng_state(new_state: torch.Tensor, *args, **kwargs) -> None:
    torch.default_generator.set_state(new_state)


def _cpu_manual_seed(seed: int) -> None:
    torch.default_generator.manual_seed(int(seed))


def _noop(*args, **kwargs) -> None:
    return None


def _null_stream(*args, **kwargs) -> _NullStream:
    return _NULL_STREAM


def _current_device() -> torch.device:
    return _CPU


def _stream_context(stream=None) -> contextlib.nullcontext:
    return contextlib.nullcontext(stream)


def _patch_process_wide() -> None:
    """Replace the torch.cuda functions and megatron's RNG helpers (module attributes: visible to every thread)."""
    global _patched
    if _patched:
        return
    torch.cuda.current_device = _current_device
    torch.cuda.synchronize = _noop
    torch.cuda.reset_peak_memory_stats = _noop
    torch.cuda.current_stream = _null_stream
    torch.cuda.Stream = _NullStream
    torch.cuda.stream = _stream_context
    torch.cuda.Event = _NullEvent
    torch.cuda.default_stream = _null_stream
    torch.cuda.get_rng_state = _cpu_get_rng_state
    torch.cuda.set_rng_state = _cpu_set_rng_state
    torch.cuda.manual_seed = _cpu_manual_seed
    torch.cuda.random.get_rng_state = _cpu_get_rng_state
    torch.cuda.random.set_rng_state = _cpu_set_rng_state
    for module_name, attr in _MEGATRON_RNG_FUNCTIONS:
        module = importlib.import_module(module_name)
        replacement = _cpu_get_rng_state if attr.startswith("_get") else _cpu_set_rng_state
        setattr(module, attr, replacement)
    _patched = True


def _maybe_move_tensor_to_cpu(tensor, as_numpy: bool = False, record_stream: bool = False):
    """megatron's ``maybe_move_tensor_to_cpu`` for a CPU-only process: numpy conversion also for CPU tensors."""
    if torch.is_tensor(tensor) and as_numpy:
        return tensor.numpy()
    return tensor


def _patch_moe_dispatcher() -> None:
    for module_name in _MOE_SPLIT_HELPER_MODULES:
        module = importlib.import_module(module_name)
        module.maybe_move_tensor_to_cpu = _maybe_move_tensor_to_cpu


def define_missing_te_symbols() -> None:
    """Define ``te_general_gemm = None`` in megatron's MoE utils when TE did not import (see module docstring)."""
    moe_utils = importlib.import_module("megatron.core.transformer.moe.moe_utils")
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def apply() -> bool:
    """Make megatron-core usable on this CPU-only process; returns whether the shim is active.

    Call it once per process (and once per extra thread that runs megatron code) before building models. A no-op
    that returns False when CUDA is available. Raises ``RuntimeError`` listing the broken assumptions if the
    installed megatron-core no longer matches what the shim redirects.
    """
    if torch.cuda.is_available():
        return False
    with _lock:
        if not _patched:
            broken = verify_assumptions()
            if broken:
                raise RuntimeError(
                    "slime_entropy's megatron CPU shim does not match the installed megatron-core "
                    f"({_megatron_version()}):\n  - "
                    + "\n  - ".join(broken)
                    + "\nUpdate slime_entropy/megatron/cpu_shim.py for this version, or install megatron-core 0.16.x."
                )
            _patch_process_wide()
            define_missing_te_symbols()
            _patch_moe_dispatcher()
            logger.info("megatron CPU shim applied (megatron-core %s)", _megatron_version())
        thread_id = threading.get_ident()
        if thread_id not in _applied_threads:
            _CudaToCpuMode().__enter__()  # stays on this thread's mode stack for the life of the thread
            _applied_threads.add(thread_id)
    return True


def is_applied() -> bool:
    """Whether :func:`apply` has redirected CUDA calls on the current thread."""
    return threading.get_ident() in _applied_threads


def _megatron_version() -> str:
    try:
        from megatron.core import package_info

        return package_info.__version__
    except ImportError:  # pragma: no cover - reported by verify_assumptions
        return "not installed"


def _megatron_root() -> Path:
    import megatron.core

    return Path(megatron.core.__file__).parent


def cuda_api_used_on_training_path() -> dict[str, list[str]]:
    """``{torch.cuda attribute: [modules that use it]}`` over :data:`TRAINING_PATH_MODULES`."""
    root = _megatron_root()
    used: dict[str, list[str]] = {}
    for rel in TRAINING_PATH_MODULES:
        path = root / rel
        if not path.exists():
            continue
        for name in sorted(set(re.findall(r"torch\.cuda\.([A-Za-z_]+)", path.read_text()))):
            used.setdefault(name, []).append(rel)
    return used


def verify_assumptions() -> list[str]:
    """Check what the shim relies on in the installed megatron-core; returns the broken assumptions (empty = ok).

    Structural checks only (no model is built); the shim test adds the behavioural ones.
    """
    broken: list[str] = []
    try:
        root = _megatron_root()
    except ImportError:
        return ["megatron-core is not installed (pip install -c constraints-cpu.txt megatron-core==0.16.1 psutil)"]
    missing = [rel for rel in TRAINING_PATH_MODULES if not (root / rel).exists()]
    if missing:
        broken.append(f"training-path modules moved or removed: {missing}")
    for name, modules in cuda_api_used_on_training_path().items():
        if name not in CUDA_API_ON_TRAINING_PATH:
            broken.append(f"torch.cuda.{name} is now used by {modules}; the shim has not reviewed it")
    rng = importlib.import_module("megatron.core.tensor_parallel.random")
    for module_name, attr in _MEGATRON_RNG_FUNCTIONS:
        module = importlib.import_module(module_name)
        if not callable(getattr(module, attr, None)):
            broken.append(f"{module_name}.{attr} no longer exists; the RNG tracker redirect needs a new target")
    tracker_src = inspect.getsource(rng.CudaRNGStatesTracker)
    for needed in (
        "torch.cuda.get_rng_state()",
        "torch.cuda.manual_seed(",
        "_set_cuda_rng_state(",
        "_get_cuda_rng_state(",
    ):
        if needed not in tracker_src:
            broken.append(f"CudaRNGStatesTracker no longer calls {needed}; its RNG redirect may be incomplete")
    moe_utils = importlib.import_module("megatron.core.transformer.moe.moe_utils")
    gating_src = inspect.getsource(moe_utils.RouterGatingLinearFunction)
    if not getattr(moe_utils, "HAVE_TE", False) and "te_general_gemm is not None" not in gating_src:
        broken.append("RouterGatingLinearFunction no longer tests te_general_gemm; review define_missing_te_symbols")
    helper_src = inspect.getsource(moe_utils.maybe_move_tensor_to_cpu)
    if "tensor.is_cuda" not in helper_src or "as_numpy" not in helper_src:
        broken.append("moe_utils.maybe_move_tensor_to_cpu changed; review the shim's numpy split-size replacement")
    for module_name in _MOE_SPLIT_HELPER_MODULES:
        if not hasattr(importlib.import_module(module_name), "maybe_move_tensor_to_cpu"):
            broken.append(f"{module_name} no longer uses maybe_move_tensor_to_cpu; review the shim")
    seed_src = inspect.getsource(rng.model_parallel_cuda_manual_seed)
    if "torch.cuda.manual_seed(" not in seed_src:
        broken.append("model_parallel_cuda_manual_seed no longer seeds through torch.cuda.manual_seed")
    return broken
