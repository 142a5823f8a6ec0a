"""The built-in engine: an HTTP server speaking SGLang's native API, generating with a transformers model.

    python -m slime_entropy.rollout.engine_builtin --model-path CKPT --host 127.0.0.1 --port 30000

It exists so that machines without a GPU (laptops, CI) run exactly the client code that talks to SGLang on GPU
clusters. It is a real generator (see :mod:`slime_entropy.rollout.generation`), not a canned responder.

Endpoints (request and response fields as in SGLang; unsupported options are rejected with HTTP 400, never
silently ignored):

- ``POST /generate`` — ``input_ids`` or ``text`` (one prompt or a list), ``sampling_params`` (``temperature``,
  ``top_p``, ``top_k``, ``max_new_tokens``, ``stop``, ``stop_token_ids``, ``ignore_eos``, ``skip_special_tokens``,
  ``no_stop_trim``, ``spaces_between_special_tokens``, ``n=1``, ``sampling_seed``: each draw is seeded by
  (seed, sequence position), so the tokens do not depend on the batch and ``prompt + prefix`` continues exactly),
  ``return_logprob``, ``rid``. Response: ``text``, ``output_ids``, ``meta_info`` with ``id``, ``finish_reason``,
  ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``weight_version``, ``e2e_latency`` and, with
  ``return_logprob``, ``output_token_logprobs`` as ``[logprob, token_id, None]`` triples.
- ``POST /update_weights_from_disk`` — ``model_path`` (HF safetensors directory), optional ``weight_version``;
  answers ``{"success", "message", "num_paused_requests"}``. All tensors are checked before any is copied, so a bad
  checkpoint leaves the served weights untouched.
- ``POST /init_weights_update_group``, ``POST /update_weights_from_distributed`` — the trainer-to-engine broadcast
  path, implemented with the gloo backend (see :mod:`slime_entropy.rollout.weight_sync`).
- ``GET /health``, ``GET /health_generate``, ``GET|POST /flush_cache``, ``GET /get_model_info``,
  ``GET /get_server_info``, ``POST /abort_request`` (``rid`` or ``abort_all``), ``POST /pause_generation``
  (``mode`` as SGLang: ``abort``, the default, ends every request in flight with ``finish_reason`` abort; with
  ``retract`` or ``in_place`` the running batch finishes on the weights it started with, where SGLang would hold or
  re-queue it and finish it after ``/continue_generation``, on the weights loaded meanwhile; either way no new batch
  starts until then), ``POST /continue_generation``; both answer SGLang's ``{"message", "status"}``.
- ``POST /release_memory_occupation``, ``POST /resume_memory_occupation`` (``tags``: ``weights``, ``kv_cache``; all
  when absent) — SGLang's colocation offload. A CPU engine frees nothing, but it keeps the state and enforces it as
  SGLang must: no generation while anything is released, no weight update while the weights are, so a trainer
  that gets the offload order wrong fails here as it would on GPUs.

Scheduling: requests are queued; a worker thread takes everything queued (up to ``--max-batch-size``; after the
first request it keeps gathering while requests keep arriving less than 5 ms apart, for at most 50 ms) and
generates it as one batch. Requests arriving meanwhile wait for the next batch. Weight updates
take the model lock, so they happen between batches.

The process binds to 127.0.0.1 by default, and exits by itself when ``--parent-pid`` dies.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from slime_entropy.rollout.generation import BatchGenerator, GenerationRequest, GenerationResult

__all__ = ["EngineCore", "build_app", "main", "load_hf_weights", "SUPPORTED_SAMPLING_PARAMS"]

logger = logging.getLogger(__name__)

SUPPORTED_SAMPLING_PARAMS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": -1,
    "max_new_tokens": 128,
    "stop": None,
    "stop_token_ids": None,
    "ignore_eos": False,
    "skip_special_tokens": True,
    "no_stop_trim": False,
    "spaces_between_special_tokens": True,
    "n": 1,
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_new_tokens": 0,
    "sampling_seed": None,
}
MEMORY_TAGS = ("weights", "kv_cache")
# SGLang's PauseGenerationReqInput.mode values (default "abort").
PAUSE_MODES = ("abort", "retract", "in_place")
# Options accepted only at their neutral value (anything else is rejected rather than silently ignored).
_NEUTRAL_ONLY = ("n", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens")


class BadRequest(ValueError):
    """A request the engine cannot serve as asked (HTTP 400)."""


def load_hf_weights(model: torch.nn.Module, path: str | Path) -> int:
    """Copy the ``*.safetensors`` tensors of an HF checkpoint directory into ``model``; returns the tensor count.

    Every tensor is checked (names, shapes) before any parameter is touched. A missing ``lm_head.weight`` is
    accepted when the model ties it to the embedding.
    """
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no .safetensors files in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f), device="cpu"))
    own = model.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors))
    if getattr(model.config, "tie_word_embeddings", False):
        missing = [k for k in missing if k != "lm_head.weight"]
    if unexpected or missing:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, " f"unexpected {unexpected[:5]}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor.to(own[name].dtype))
    return len(tensors)


@dataclass
class _Pending:
    rid: str
    request: GenerationRequest
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    created: float = field(default_factory=time.monotonic)
    aborted: threading.Event = field(default_factory=threading.Event)


class EngineCore:
    """Model, tokenizer, request queue and the batching worker thread (no HTTP here)."""

    def __init__(
        self,
        model_path: str,
        *,
        max_batch_size: int = 64,
        seed: int = 0,
        batch_window_s: float = 0.05,
        batch_gap_s: float = 0.005,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        self.generator = BatchGenerator(self.model, self.tokenizer, seed=seed)
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.batch_gap_s = batch_gap_s
        self.weight_version = "default"
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        self.model_lock = threading.Lock()
        self._waiting: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._inflight: dict[str, _Pending] = {}
        self._inflight_lock = threading.Lock()
        self._paused = False  # set by /pause_generation: no new batch starts (the running one finishes)
        self._stop = False
        self._worker = threading.Thread(target=self._work, name="engine-batcher", daemon=True)
        self._worker.start()
        self.weight_group = None  # set by /init_weights_update_group
        self.released: set[str] = set()  # memory tags released by /release_memory_occupation
        self.num_batches = 0
        self.num_requests = 0
        self.generate_seconds = 0.0

    # ----- scheduling -----
    def submit(self, rid: str, request: GenerationRequest) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        pending = _Pending(rid=rid, request=request, future=loop.create_future(), loop=loop)
        request.is_aborted = pending.aborted.is_set
        with self._inflight_lock:
            self._inflight[rid] = pending
        with self._cond:
            self._waiting.append(pending)
            self._cond.notify_all()
        return pending.future

    def abort(self, rid: str | None, abort_all: bool) -> int:
        with self._inflight_lock:
            targets = (
                list(self._inflight.values()) if abort_all else [p for r, p in self._inflight.items() if r == rid]
            )
        for p in targets:
            p.aborted.set()
        return len(targets)

    def _take_batch(self) -> list[_Pending]:
        with self._cond:
            if not self._cond.wait_for(lambda: self._stop or (self._waiting and not self._paused), timeout=0.1):
                return []
            # Requests sent together (one per sample) arrive over a few milliseconds: keep gathering while they
            # keep coming (each gap shorter than ``batch_gap_s``), up to ``batch_window_s`` or a full batch.
            deadline = time.monotonic() + self.batch_window_s
            seen = len(self._waiting)
            while not self._stop and not self._paused and seen < self.max_batch_size:
                remaining = min(self.batch_gap_s, deadline - time.monotonic())
                if remaining <= 0:
                    break
                self._cond.wait(timeout=remaining)
                if len(self._waiting) == seen:
                    break
                seen = len(self._waiting)
            if self._stop or self._paused:
                return []
            return [self._waiting.popleft() for _ in range(min(self.max_batch_size, len(self._waiting)))]

    def _work(self) -> None:
        while not self._stop:
            batch = self._take_batch()
            if not batch:
                continue
            with self.model_lock:
                started = time.perf_counter()
                try:
                    results = self.generator.generate([p.request for p in batch])
                    outcome = [(p, r, None) for p, r in zip(batch, results, strict=True)]
                except Exception as e:  # noqa: BLE001 - report to every waiting request, keep serving
                    logger.exception("generation failed")
                    outcome = [(p, None, e) for p in batch]
                self.generate_seconds += time.perf_counter() - started
                self.num_batches += 1
                self.num_requests += len(batch)
            for p, result, error in outcome:
                with self._inflight_lock:
                    self._inflight.pop(p.rid, None)
                p.loop.call_soon_threadsafe(_resolve, p.future, result, error)

    def pause(self) -> None:
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def num_waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def num_running(self) -> int:
        """Requests in the batch being generated now (submitted, no longer queued, not yet answered)."""
        with self._inflight_lock:
            inflight = len(self._inflight)
        return max(inflight - self.num_waiting(), 0)

    def healthy(self) -> bool:
        return self._worker.is_alive()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._worker.join(timeout=5)

    # ----- weights -----
    def update_weights_from_disk(self, model_path: str, weight_version: str | None) -> tuple[bool, str]:
        with self.model_lock:
            try:
                count = load_hf_weights(self.model, model_path)
            except Exception as e:  # noqa: BLE001 - reported to the caller, weights unchanged
                return False, f"{type(e).__name__}: {e}"
            self.model_path = model_path
            if weight_version is not None:
                self.weight_version = weight_version
        return True, f"loaded {count} tensors from {model_path}"


def _resolve(future: asyncio.Future, result: GenerationResult | None, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _build_request(core: EngineCore, input_ids: list[int], params: dict[str, Any]) -> GenerationRequest:
    unknown = sorted(set(params) - set(SUPPORTED_SAMPLING_PARAMS))
    if unknown:
        raise BadRequest(
            f"unsupported sampling_params {unknown}; the built-in engine supports "
            f"{sorted(SUPPORTED_SAMPLING_PARAMS)}"
        )
    p = {**SUPPORTED_SAMPLING_PARAMS, **{k: v for k, v in params.items() if v is not None}}
    for key in _NEUTRAL_ONLY:
        if p[key] != SUPPORTED_SAMPLING_PARAMS[key]:
            raise BadRequest(f"sampling_params.{key}={p[key]!r} is not supported by the built-in engine")
    temperature, top_p, top_k = float(p["temperature"]), float(p["top_p"]), int(p["top_k"])
    if temperature < 0 or not 0 < top_p <= 1 or top_k == 0 or top_k < -1:
        raise BadRequest(f"invalid temperature/top_p/top_k: {temperature}, {top_p}, {top_k}")
    max_new_tokens = int(p["max_new_tokens"])
    if max_new_tokens < 0:
        raise BadRequest(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not input_ids:
        raise BadRequest("empty prompt")
    vocab = core.model.config.vocab_size
    if any(not 0 <= t < vocab for t in input_ids):
        raise BadRequest(f"input_ids must lie in [0, {vocab})")
    if len(input_ids) + max_new_tokens > core.context_length:
        raise BadRequest(
            f"prompt ({len(input_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"context length {core.context_length}"
        )
    stop = p["stop"]
    stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
    stop_ids = set(p["stop_token_ids"] or ())
    if not p["ignore_eos"] and core.tokenizer.eos_token_id is not None:
        stop_ids.add(core.tokenizer.eos_token_id)
    return GenerationRequest(
        input_ids=list(input_ids),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop_token_ids=frozenset(stop_ids),
        stop=stop,
        seed=None if p["sampling_seed"] is None else int(p["sampling_seed"]),
    )


def _format_output(core, rid, request, result, params, return_logprob, started) -> dict[str, Any]:
    skip_special = params.get("skip_special_tokens", SUPPORTED_SAMPLING_PARAMS["skip_special_tokens"])
    text = core.tokenizer.decode(result.output_ids, skip_special_tokens=bool(skip_special))
    matched = result.finish_reason.get("matched")
    if isinstance(matched, str) and not params.get("no_stop_trim", False):
        text = text[: text.find(matched)] if matched in text else text
    meta: dict[str, Any] = {
        "id": rid,
        "finish_reason": result.finish_reason,
        "prompt_tokens": len(request.input_ids),
        "completion_tokens": len(result.output_ids),
        "cached_tokens": 0,
        "weight_version": core.weight_version,
        "e2e_latency": time.monotonic() - started,
    }
    if return_logprob:
        meta["output_token_logprobs"] = [
            [lp, tok, None] for lp, tok in zip(result.output_logprobs, result.output_ids, strict=True)
        ]
    return {"text": text, "output_ids": result.output_ids, "meta_info": meta}


def build_app(core: EngineCore) -> FastAPI:
    app = FastAPI(title="slime_entropy built-in engine")

    @app.get("/health")
    async def health():
        return PlainTextResponse("ok") if core.healthy() else PlainTextResponse("unhealthy", status_code=503)

    @app.get("/health_generate")
    async def health_generate():
        try:
            request = _build_request(core, [core.tokenizer.eos_token_id or 0], {"max_new_tokens": 1})
            await asyncio.wait_for(core.submit(f"health-{uuid.uuid4().hex}", request), timeout=60)
        except Exception as e:  # noqa: BLE001
            return PlainTextResponse(f"unhealthy: {e}", status_code=503)
        return PlainTextResponse("ok")

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache():
        # KV caches live only for the duration of one batch; there is no cross-request cache to flush.
        return PlainTextResponse("Cache flushed.")

    @app.get("/get_model_info")
    async def get_model_info():
        return {
            "model_path": core.model_path,
            "tokenizer_path": core.model_path,
            "is_generation": True,
            "weight_version": core.weight_version,
        }

    @app.get("/get_server_info")
    async def get_server_info():
        return {
            "engine": "slime_entropy-builtin",
            "max_batch_size": core.max_batch_size,
            "num_threads": torch.get_num_threads(),
            "context_length": core.context_length,
            "num_waiting_requests": core.num_waiting(),
            "num_running_requests": core.num_running(),
            "weight_version": core.weight_version,
            "num_batches": core.num_batches,
            "num_requests": core.num_requests,
            "generate_seconds": core.generate_seconds,
        }

    @app.post("/abort_request")
    async def abort_request(request: Request):
        body = await request.json()
        num = core.abort(body.get("rid"), bool(body.get("abort_all", False)))
        return {"success": True, "num_aborted": num}

    @app.post("/pause_generation")
    async def pause_generation(request: Request):
        try:
            body = orjson.loads(await request.body() or b"{}")
            mode = body.get("mode", "abort") if isinstance(body, dict) else None
            if mode not in PAUSE_MODES:
                raise BadRequest(f"mode must be one of {list(PAUSE_MODES)}, got {mode!r}")
        except (BadRequest, orjson.JSONDecodeError) as e:
            return JSONResponse({"error": {"message": str(e)}}, status_code=400)
        core.pause()
        if mode == "abort":  # SGLang's default: what is in flight now ends with finish_reason abort
            core.abort(None, abort_all=True)
        return {"message": "Generation paused successfully.", "status": "ok"}

    @app.post("/continue_generation")
    async def continue_generation():
        core.resume()
        return {"message": "Generation continued successfully.", "status": "ok"}

    def _memory_tags(body: Any) -> set[str]:
        tags = (body or {}).get("tags") if isinstance(body, dict) else None
        tags = set(MEMORY_TAGS if tags is None else tags)
        if not tags <= set(MEMORY_TAGS):
            raise BadRequest(f"unknown memory tags {sorted(tags - set(MEMORY_TAGS))}; use {list(MEMORY_TAGS)}")
        return tags

    @app.post("/release_memory_occupation")
    async def release_memory_occupation(request: Request):
        try:
            tags = _memory_tags(orjson.loads(await request.body() or b"{}"))
        except (BadRequest, orjson.JSONDecodeError) as e:
            return JSONResponse({"success": False, "message": str(e)}, status_code=400)
        core.released |= tags
        return {"success": True, "message": f"released {sorted(tags)}"}

    @app.post("/resume_memory_occupation")
    async def resume_memory_occupation(request: Request):
        try:
            tags = _memory_tags(orjson.loads(await request.body() or b"{}"))
        except (BadRequest, orjson.JSONDecodeError) as e:
            return JSONResponse({"success": False, "message": str(e)}, status_code=400)
        core.released -= tags
        return {"success": True, "message": f"resumed {sorted(tags)}"}

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request):
        body = await request.json()
        if "weights" in core.released:
            return JSONResponse(
                {"success": False, "message": "weights are released (/resume_memory_occupation first)"},
                status_code=400,
            )
        if "model_path" not in body:
            return JSONResponse({"success": False, "message": "model_path is required"}, status_code=400)
        ok, message = await asyncio.to_thread(
            core.update_weights_from_disk, body["model_path"], body.get("weight_version")
        )
        return JSONResponse(
            {"success": ok, "message": message, "num_paused_requests": 0}, status_code=200 if ok else 400
        )

    @app.post("/init_weights_update_group")
    async def init_weights_update_group(request: Request):
        from slime_entropy.rollout.weight_sync import engine_join_update_group

        body = await request.json()
        try:
            core.weight_group = await asyncio.to_thread(engine_join_update_group, body)
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"success": False, "message": f"{type(e).__name__}: {e}"}, status_code=400)
        return {"success": True, "message": f"joined group {body.get('group_name', 'weight_update_group')}"}

    @app.post("/update_weights_from_distributed")
    async def update_weights_from_distributed(request: Request):
        from slime_entropy.rollout.weight_sync import engine_receive_broadcast

        body = await request.json()
        if core.weight_group is None:
            return JSONResponse(
                {"success": False, "message": "call /init_weights_update_group first"}, status_code=400
            )

        def receive():
            with core.model_lock:
                count = engine_receive_broadcast(core.model, core.weight_group, body)
                if body.get("weight_version") is not None:
                    core.weight_version = body["weight_version"]
                return count

        try:
            count = await asyncio.to_thread(receive)
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"success": False, "message": f"{type(e).__name__}: {e}"}, status_code=400)
        return {"success": True, "message": f"received {count} tensors"}

    @app.post("/generate")
    async def generate(request: Request):
        started = time.monotonic()
        try:
            body = orjson.loads(await request.body())
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            if body.get("stream"):
                raise BadRequest("stream=true is not supported by the built-in engine")
            if core.released:
                raise BadRequest(f"memory {sorted(core.released)} is released (/resume_memory_occupation first)")
            if body.get("top_logprobs_num"):
                raise BadRequest("top_logprobs_num is not supported by the built-in engine")
            if "input_ids" in body and body["input_ids"] is not None:
                prompts = body["input_ids"]
                batched = bool(prompts) and isinstance(prompts[0], list)
                prompts = prompts if batched else [prompts]
            elif "text" in body and body["text"] is not None:
                texts = body["text"]
                batched = isinstance(texts, list)
                texts = texts if batched else [texts]
                prompts = [core.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            else:
                raise BadRequest("give input_ids or text")
            params = body.get("sampling_params") or {}
            params_list = params if isinstance(params, list) else [params] * len(prompts)
            rids = body.get("rid")
            if rids is None:
                rids = [uuid.uuid4().hex for _ in prompts]
            elif isinstance(rids, str):
                rids = [rids] if not batched else [f"{rids}-{i}" for i in range(len(prompts))]
            if not (len(params_list) == len(rids) == len(prompts)):
                raise BadRequest("sampling_params / rid lists must match the number of prompts")
            requests = [_build_request(core, ids, p) for ids, p in zip(prompts, params_list, strict=True)]
        except (BadRequest, TypeError, ValueError, orjson.JSONDecodeError) as e:
            return JSONResponse({"error": {"message": str(e)}}, status_code=400)
        return_logprob = bool(body.get("return_logprob", False))
        futures = [core.submit(rid, req) for rid, req in zip(rids, requests, strict=True)]
        try:
            results = await asyncio.gather(*futures)
        except Exception as e:  # noqa: BLE001
            return JSONResponse({"error": {"message": f"generation failed: {e}"}}, status_code=500)
        outputs = [
            _format_output(core, rid, req, res, p, return_logprob, started)
            for rid, req, res, p in zip(rids, requests, results, params_list, strict=True)
        ]
        # orjson: a batch of long responses is hundreds of kB of log-prob triples; the stdlib encoder would be
        # a visible share of the request time.
        return Response(orjson.dumps(outputs if batched else outputs[0]), media_type="application/json")

    return app


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            logger.warning("parent process %d is gone; engine exiting", parent_pid)
            os._exit(0)
        except PermissionError:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument("--random-seed", type=int, default=0)
    parser.add_argument("--weight-version", default="default")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s engine %(levelname)s %(message)s")
    torch.set_num_threads(args.num_threads)
    if args.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()

    import uvicorn

    core = EngineCore(args.model_path, max_batch_size=args.max_batch_size, seed=args.random_seed)
    core.weight_version = args.weight_version
    config = uvicorn.Config(
        build_app(core),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        # longer than the client's idle limit (client._KEEPALIVE_S), so the client always closes first
        timeout_keep_alive=30,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        core.close()


if __name__ == "__main__":
    main()
