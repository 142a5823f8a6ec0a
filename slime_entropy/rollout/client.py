"""Client side of the engines: routing, fault tolerance and weight updates over SGLang's HTTP API.

    pool = EnginePool.launch(engine_config, log_dir)     # async; or EnginePool.external([...urls])
    output = await pool.generate(payload)                  # one /generate call, retried on engine failure
    await pool.update_weights_from_disk(hf_dir, weight_version="3")
    await pool.close()

Routing: each request goes to the available engine with the fewest outstanding requests (the client is the
router). Fault tolerance: a transport error (connection refused/reset, engine killed mid-request), an HTTP 5xx, or
an engine-side abort marks that engine unavailable and schedules one restart (concurrent failures share it); the
request is retried on another engine, or waits for the restarted one, up to ``max_request_retries`` times. The
caller applies a response to its sample only when a call succeeds, so a retried request can neither lose nor
duplicate a sample. HTTP 4xx answers are bugs, not faults: they raise :class:`EngineRequestError` at once.

After a restart the engine gets the latest weights again: the last ``update_weights_from_disk`` checkpoint is
re-applied before the engine takes requests. After a distributed (NCCL) update there is no copy to re-apply, so a
restarted engine stays out of rotation ("stale") until the next weight update reaches it.

A health monitor (:meth:`EnginePool.monitor`) probes ``/health`` periodically and restarts engines that do not
answer within the health-check timeout, so a hung engine does not hold requests until their long timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from slime_entropy.rollout.config import EngineConfig
from slime_entropy.rollout.engine_process import EngineProcess, EngineStartError, builtin_engine_command
from slime_entropy.rollout.engine_sglang import plan_sglang_engines, sglang_server_command

__all__ = [
    "EnginePool",
    "EngineRequestError",
    "EngineUnavailableError",
    "EngineTransportError",
    "LoopThread",
    "EngineSlot",
]

logger = logging.getLogger(__name__)

# uvicorn, which serves SGLang's API and the built-in engine, closes a connection after 5 s idle (its default). A
# client that picks such a connection from its pool while the server is closing it fails to send its request
# (ClientConnectionResetError: "Cannot write to closing transport"), e.g. on the weight update that follows a
# long training step. Idle connections are therefore dropped on this side first...
_KEEPALIVE_S = 4.0
# ...and a request whose connection the server dropped before answering is sent once more on a new connection
# (a loaded machine can still delay the client's clean-up past the server's timeout).
_PEER_CLOSED = (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError)


def _peer_closed(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it, as aiohttp wraps a failed send in a ClientOSError) is the server
    closing the connection, rather than a refused connection or a time-out."""
    while error is not None:
        if isinstance(error, _PEER_CLOSED):
            return True
        error = error.__cause__
    return False


class EngineRequestError(RuntimeError):
    """The engine rejected a request (HTTP 4xx): a client or configuration bug, never retried."""


class EngineUnavailableError(RuntimeError):
    """No engine could serve a request within the retry budget."""


class _RetryableFailure(Exception):
    pass


class EngineTransportError(ConnectionError):
    """The HTTP exchange itself failed: refused, reset, engine died mid-request, or timed out."""


@dataclass
class _Answer:
    status: int
    body: Any
    """Decoded JSON, or the text when the answer is not JSON."""
    raw: bytes

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")

    @property
    def success(self) -> bool:
        return self.status == 200 and not (isinstance(self.body, dict) and self.body.get("success") is False)


@dataclass(eq=False)
class EngineSlot:
    index: int
    base_url: str | None = None
    """Fixed URL of an external engine; launched engines take theirs from ``process``."""
    process: EngineProcess | None = None
    available: bool = True
    stale: bool = False
    dead: bool = False
    outstanding: int = 0
    num_failures: int = 0
    num_restarts: int = 0
    restart_task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.process.url if self.process is not None else self.base_url  # type: ignore[return-value]

    @property
    def routable(self) -> bool:
        return self.available and not self.stale and not self.dead


class EnginePool:
    """Engines behind one client. All coroutines must run on one event loop (see :class:`LoopThread`)."""

    def __init__(self, slots: list[EngineSlot], config: EngineConfig):
        self.slots = slots
        self.config = config
        self._http: aiohttp.ClientSession | None = None
        self._changed: asyncio.Condition | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._last_disk_weights: tuple[str, str | None] | None = None
        self._weights_from_broadcast = False
        self.num_retries = 0

    # ----- construction -----
    @classmethod
    def from_config(cls, config: EngineConfig, log_dir: str | Path) -> EnginePool:
        """Slots for ``config`` (processes not started yet; call :meth:`start`)."""
        if config.external_engine_addrs:
            slots = [EngineSlot(i, base_url=f"http://{a}") for i, a in enumerate(config.external_engine_addrs)]
            return cls(slots, config)
        slots = []
        if config.backend == "builtin":
            threads = config.builtin_num_threads or 1
            for i in range(config.num_engines):

                def command(port, i=i):
                    return builtin_engine_command(
                        model_path=config.hf_checkpoint,
                        host=config.host,
                        port=port,
                        max_batch_size=config.builtin_max_batch_size,
                        num_threads=threads,
                        seed=config.seed + i,
                    )

                slots.append(EngineSlot(i, process=EngineProcess(i, command, host=config.host, log_dir=log_dir)))
        else:
            from slime_entropy.rollout.engine_process import find_free_port

            placements = plan_sglang_engines(
                num_engines=config.num_engines,
                num_gpus_per_engine=config.num_gpus_per_engine,
                num_gpus_per_node=config.num_gpus_per_node,
                gpu_ids=config.gpu_ids,
            )
            for placement in placements:

                def command(port, placement=placement):
                    return sglang_server_command(
                        model_path=config.hf_checkpoint,
                        host=config.host,
                        port=port,
                        placement=placement,
                        nccl_port=find_free_port(),
                        seed=config.seed,
                        options=config.sglang_options,
                    )

                i = placement.engine_index
                slots.append(EngineSlot(i, process=EngineProcess(i, command, host=config.host, log_dir=log_dir)))
        return cls(slots, config)

    def _ensure_runtime(self) -> None:
        if self._http is None:
            # aiohttp rather than httpx: at 32 concurrent requests httpx's pool cost ~6 ms per request here,
            # aiohttp ~1 ms (measured against the built-in engine on a 2-core machine).
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.config.total_concurrency + 8, keepalive_timeout=_KEEPALIVE_S
                ),
                timeout=aiohttp.ClientTimeout(total=self.config.request_timeout, connect=10.0),
            )
            self._changed = asyncio.Condition()
            self._semaphore = asyncio.Semaphore(self.config.total_concurrency)

    async def _request(
        self, method: str, url: str, body: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> _Answer:
        """One HTTP exchange; every transport-level failure becomes :class:`EngineTransportError`."""
        self._ensure_runtime()
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["data"] = orjson.dumps(body)
            kwargs["headers"] = {"Content-Type": "application/json"}
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout, connect=min(10.0, timeout))
        for attempt in (0, 1):
            answered = False
            try:
                async with self._http.request(method, url, **kwargs) as response:
                    answered = True
                    raw = await response.read()
                    status = response.status
                    is_json = response.content_type == "application/json"
                break
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                if attempt == 0 and not answered and _peer_closed(e):
                    logger.debug("%s %s: the server closed the connection before answering (%r); resending", method,
                                 url, e)  # fmt: skip
                    continue
                raise EngineTransportError(f"{method} {url}: {type(e).__name__}: {e}") from e
        if is_json and raw:
            try:
                return _Answer(status, orjson.loads(raw), raw)
            except orjson.JSONDecodeError:
                pass
        return _Answer(status, raw.decode("utf-8", errors="replace"), raw)

    async def start(self) -> None:
        """Launch every engine in parallel and wait until all are healthy (stopping all on failure)."""
        self._ensure_runtime()
        launched = [s for s in self.slots if s.process is not None]
        try:
            for s in launched:
                s.process.start()
            await asyncio.gather(
                *(
                    asyncio.to_thread(
                        s.process.wait_healthy, self.config.startup_timeout, self.config.health_check_timeout
                    )
                    for s in launched
                )
            )
        except BaseException:
            await self.close()
            raise
        for s in self.slots:
            if s.process is None and not await self._probe(s):
                raise EngineUnavailableError(f"external engine {s.url} does not answer /health")

    # ----- routing -----
    async def _acquire(self) -> EngineSlot:
        assert self._changed is not None
        async with self._changed:
            while True:
                candidates = [s for s in self.slots if s.routable]
                if candidates:
                    slot = min(candidates, key=lambda s: (s.outstanding, s.index))
                    slot.outstanding += 1
                    return slot
                if all(s.dead for s in self.slots):
                    raise EngineUnavailableError("every engine failed to restart; see the engine logs")
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=self.config.startup_timeout)
                except (TimeoutError, asyncio.TimeoutError):
                    raise EngineUnavailableError(
                        f"no engine available for {self.config.startup_timeout:.0f} s "
                        f"(states: {[(s.index, s.available, s.stale, s.dead) for s in self.slots]})"
                    ) from None

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def generate(self, payload: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        """POST ``payload`` to ``/generate`` on some engine; retried on engine failures (see module doc). A batch
        payload (``input_ids`` a list of lists) is answered with a list."""
        self._ensure_runtime()
        assert self._semaphore is not None
        async with self._semaphore:
            last_error: Exception | None = None
            for attempt in range(self.config.max_request_retries + 1):
                slot = await self._acquire()
                try:
                    output = await self._post_generate(slot, payload)
                except _RetryableFailure as e:
                    last_error = e.__cause__ or e
                    self.num_retries += attempt < self.config.max_request_retries
                    self._report_failure(slot, last_error)
                    continue
                finally:
                    slot.outstanding -= 1
                return output
        raise EngineUnavailableError(
            f"/generate failed {self.config.max_request_retries + 1} times; last error: {last_error!r}"
        )

    async def _post_generate(self, slot: EngineSlot, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._request("POST", f"{slot.url}/generate", payload)
        except EngineTransportError as e:
            raise _RetryableFailure() from e
        if answer.status >= 500:
            raise _RetryableFailure() from RuntimeError(f"HTTP {answer.status}: {answer.text[:300]}")
        if answer.status != 200:
            raise EngineRequestError(
                f"engine {slot.url} rejected /generate (HTTP {answer.status}): " f"{answer.text[:500]}"
            )
        output = answer.body
        for item in output if isinstance(output, list) else [output]:
            if ((item.get("meta_info") or {}).get("finish_reason") or {}).get("type") == "abort":
                # Aborted by the engine (e.g. a weight update with abort_all_requests): generate again.
                raise _RetryableFailure() from RuntimeError("engine aborted the request")
        return output

    # ----- failures and restarts -----
    def _report_failure(self, slot: EngineSlot, error: Exception) -> None:
        slot.num_failures += 1
        if slot.restart_task is not None and not slot.restart_task.done():
            return
        slot.available = False
        logger.warning("engine %d (%s) failed: %r; recovering", slot.index, slot.url, error)
        slot.restart_task = asyncio.get_running_loop().create_task(self._recover(slot))

    async def _recover(self, slot: EngineSlot) -> None:
        try:
            if slot.process is None:
                await self._wait_external(slot)
            elif slot.process.is_alive() and await self._probe(slot):
                # The failure was transient (e.g. one reset connection) and the engine answers: keep it.
                pass
            else:
                await asyncio.to_thread(
                    slot.process.restart, self.config.startup_timeout, self.config.health_check_timeout
                )
                slot.num_restarts += 1
                await self._restore_weights(slot)
            slot.available = True
        except (EngineStartError, EngineUnavailableError, EngineRequestError, EngineTransportError) as e:
            logger.error("engine %d could not be recovered: %s", slot.index, e)
            slot.dead = True
        finally:
            await self._notify()

    async def _wait_external(self, slot: EngineSlot) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.startup_timeout
        while loop.time() < deadline:
            if await self._probe(slot):
                return
            await asyncio.sleep(1.0)
        raise EngineUnavailableError(f"external engine {slot.url} did not come back")

    async def _restore_weights(self, slot: EngineSlot) -> None:
        if self._last_disk_weights is not None:
            path, version = self._last_disk_weights
            await self._update_one_from_disk(slot, path, version)
        elif self._weights_from_broadcast:
            slot.stale = True
            logger.warning(
                "engine %d restarted after a broadcast weight update: it serves no requests until the next update "
                "(re-create the broadcast group, or update from disk)",
                slot.index,
            )
        logger.info("engine %d restarted (%d restarts) at %s", slot.index, slot.num_restarts, slot.url)

    async def _probe(self, slot: EngineSlot) -> bool:
        try:
            answer = await self._request("GET", f"{slot.url}/health", timeout=self.config.health_check_timeout)
        except EngineTransportError:
            return False
        return answer.status == 200

    async def monitor(self, interval: float) -> None:
        """Probe every available engine each ``interval`` s; recover those that fail. Runs until cancelled."""
        self._ensure_runtime()
        while True:
            await asyncio.sleep(interval)
            for slot in self.slots:
                if slot.available and not slot.dead and not await self._probe(slot):
                    self._report_failure(slot, RuntimeError("health check failed"))

    async def wait_recovered(self) -> None:
        """Wait for restarts in progress (used before weight updates and at shutdown)."""
        tasks = [s.restart_task for s in self.slots if s.restart_task is not None and not s.restart_task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ----- weights and control -----
    async def _update_one_from_disk(self, slot: EngineSlot, path: str, version: str | None) -> None:
        body: dict[str, Any] = {"model_path": path}
        if version is not None:
            body["weight_version"] = version
        answer = await self._request(
            "POST", f"{slot.url}/update_weights_from_disk", body, timeout=self.config.startup_timeout
        )
        if not answer.success or not isinstance(answer.body, dict):
            message = answer.body.get("message") if isinstance(answer.body, dict) else answer.text[:300]
            raise EngineRequestError(f"engine {slot.url} failed to load {path}: {message}")
        slot.stale = False

    async def update_weights_from_disk(self, path: str, weight_version: str | None = None) -> None:
        """Every engine loads the HF safetensors checkpoint at ``path`` (``/update_weights_from_disk``)."""
        self._ensure_runtime()
        await self.wait_recovered()
        live = [s for s in self.slots if not s.dead]
        await asyncio.gather(*(self._update_one_from_disk(s, path, weight_version) for s in live))
        self._last_disk_weights = (str(path), weight_version)
        self._weights_from_broadcast = False

    def mark_distributed_update(self) -> None:
        """Record that weights now come from a broadcast: restarted engines become stale until the next update."""
        self._last_disk_weights = None
        self._weights_from_broadcast = True

    def live_slots(self) -> list[EngineSlot]:
        return [s for s in self.slots if not s.dead]

    async def post_each(
        self,
        path: str,
        bodies: list[dict[str, Any]],
        *,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """POST ``bodies[i]`` to ``path`` on live engine ``i`` concurrently; raise unless every answer is a 200
        whose JSON (if any) does not say ``"success": false``. Returns the decoded answers."""
        self._ensure_runtime()
        slots = self.live_slots()
        if len(bodies) != len(slots):
            raise ValueError(f"{len(bodies)} bodies for {len(slots)} live engines")
        answers = await asyncio.gather(
            *(
                self._request("POST", f"{s.url}{path}", b, timeout=timeout or self.config.request_timeout)
                for s, b in zip(slots, bodies, strict=True)
            )
        )
        for s, a in zip(slots, answers, strict=True):
            if not a.success:
                raise EngineRequestError(f"engine {s.url} {path}: HTTP {a.status}: {a.text[:300]}")
        return [a.body for a in answers]

    async def post_all(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """The same ``body`` to every live engine (e.g. ``/flush_cache``, ``/pause_generation``)."""
        return await self.post_each(path, [body or {}] * len(self.live_slots()), timeout=timeout)

    async def abort_all(self) -> None:
        """Ask every engine to abort its outstanding requests (best effort)."""
        self._ensure_runtime()
        for s in self.slots:
            if s.routable:
                try:
                    await self._request("POST", f"{s.url}/abort_request", {"abort_all": True}, timeout=10.0)
                except EngineTransportError as e:
                    logger.warning("abort on engine %d failed: %r", s.index, e)

    async def close(self) -> None:
        for s in self.slots:
            if s.restart_task is not None and not s.restart_task.done():
                s.restart_task.cancel()
        await asyncio.gather(*(asyncio.to_thread(s.process.stop) for s in self.slots if s.process is not None))
        if self._http is not None:
            await self._http.close()
            self._http = None

    def stop_processes_now(self) -> None:
        """Synchronous last-resort cleanup (atexit / finalizers): stop every launched engine."""
        for s in self.slots:
            if s.process is not None:
                s.process.stop(grace=2.0)


class LoopThread:
    """A private asyncio event loop in a daemon thread, so synchronous callers (a trainer, a Ray actor that already
    runs its own loop) can drive the async client: ``loop.run(coro, timeout)``."""

    def __init__(self, name: str = "slime-entropy-rollout"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine, timeout: float | None = None):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except (TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()
