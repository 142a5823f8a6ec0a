"""The SGLang contract, checked against the real SGLang package (``TESTED_SGLANG``; installed without its GPU stack).

- the ``--sglang-*`` options: the curated list (CPU machines without SGLang) exists in SGLang's ``ServerArgs`` with
  the same kind, the mirrored list is SGLang's own, and every mirrored option reaches SGLang's parser with the
  value SGLang itself would parse;
- slime's ``--sglang-*`` flag names (head-624b824a8) mean the same ``ServerArgs`` field in our trainer;
- the engine command lines of the shipped run scripts parse with ``ServerArgs`` and place the engines as intended;
- every request body the client sends is accepted by the request class SGLang's HTTP server builds from it, and
  the built-in engine answers with the fields SGLang answers with (the fields the client reads).

Evidence for the routes, read from the installed ``sglang/srt/entrypoints/http_server.py`` (0.5.23):
``POST /generate`` takes ``GenerateReqInput`` (after ``api_contract.generate_contract_error`` on the raw JSON) and
answers the tokenizer manager's output dict: ``text``, ``output_ids``, ``meta_info`` (``finish_reason`` with
``type``, ``output_token_logprobs`` as ``[logprob, token_id, text]`` triples, ``weight_version``, ...);
``/update_weights_from_disk`` takes ``UpdateWeightFromDiskReqInput`` and answers ``{"success", "message",
"num_paused_requests"}`` (HTTP 400 when not successful); ``/init_weights_update_group`` and
``/update_weights_from_distributed`` take ``InitWeightsUpdateGroupReqInput`` / ``UpdateWeightsFromDistributedReqInput``
and answer ``{"success", "message"}``; ``/release_memory_occupation`` and ``/resume_memory_occupation`` take
``Release/ResumeMemoryOccupationReqInput`` and answer an empty 200; ``/pause_generation`` and
``/continue_generation`` take ``Pause/ContinueGenerationReqInput`` and answer ``{"message", "status"}``;
``/abort_request`` takes ``AbortReq`` and answers an empty 200; ``/flush_cache`` (GET or POST) takes no body and
answers text. The route-to-class map is read from that file by :func:`_route_classes`, so a renamed class or route
fails here; the response keys are checked in its source by :func:`test_sglang_answers_the_fields_the_client_reads`.
The client treats any 200 whose JSON does not say ``"success": false`` as success, so the empty and text answers
need nothing more.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib.util
import io as _io
import json
import re
import time
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import pytest

from slime_entropy.rollout import sglang_options as so
from tests.rollout.sglang_package import io_struct, require_sglang, server_args, server_args_parser
from tests.slime_trees import slime_tree

ROUTES_USED = (
    "/generate",
    "/update_weights_from_disk",
    "/update_weights_from_distributed",
    "/init_weights_update_group",
    "/release_memory_occupation",
    "/resume_memory_occupation",
    "/pause_generation",
    "/continue_generation",
    "/abort_request",
    "/flush_cache",
)


def _sglang_file(relative: str) -> Path:
    require_sglang()
    return Path(importlib.util.find_spec("sglang").submodule_search_locations[0]) / relative


def _real_options() -> dict[str, so.PassthroughOption]:
    return {o.name: o for o in so.options_from_parser(server_args_parser())}


def _sglang_parse(argv: list[str]) -> argparse.Namespace:
    """SGLang's parser on ``argv`` (plus the one required option, the model path)."""
    return server_args_parser().parse_args(["--model-path", "m", *argv])


def _parses(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    with redirect_stderr(_io.StringIO()):
        try:
            return parser.parse_args(argv)
        except SystemExit:
            return None


def _sample_argv(option: so.PassthroughOption) -> list[str] | None:
    """``--name VALUE`` that SGLang's own parser accepts for ``option`` (None if no simple value does)."""
    if option.kind == "flag":
        return [f"--{option.name}"]
    candidates = [str(c) for c in option.choices] if option.choices else ["1", "0.5", "auto", "{}", "a"]
    for value in candidates:
        argv = [f"--{option.name}", value]
        if _parses(server_args_parser(), ["--model-path", "m", *argv]) is not None:
            return argv
    return None


def _dest(name: str) -> str:
    return server_args_parser()._option_string_actions[f"--{name}"].dest


# ----------------------------------------------------------------------------------------------------------------
# pass-through options
# ----------------------------------------------------------------------------------------------------------------


def test_curated_options_exist_in_sglang_with_the_same_kind():
    real = _real_options()
    for option in so._CURATED:
        assert option.name in real, f"--{option.name} is not an option of SGLang {so.sglang_version()}"
        theirs = real[option.name]
        assert option.kind == theirs.kind, option.name
        assert set(option.aliases) <= set(theirs.aliases), option.name
        # int/float where SGLang converts to int/float; str leaves SGLang's own converter (sizes, JSON) to it
        assert option.type in (theirs.type, str), (option.name, option.type, theirs.type)
        action = server_args_parser()._option_string_actions[f"--{option.name}"]
        assert action.nargs == {"flag": 0, "value": None, "list": "+"}[option.kind], option.name
    for name in so.RETIRED:
        assert name not in real and f"--{name}" not in server_args_parser()._option_string_actions
    for name in (*so.LAUNCHER_OWNED, *so.REFUSED):
        assert f"--{name}" in server_args_parser()._option_string_actions, name


def test_the_mirror_is_sglangs_option_list():
    """With SGLang installed, every long option of ServerArgs is a --sglang-* flag (launcher-owned ones refused),
    and the cached list equals a fresh read."""
    require_sglang()
    options = so.passthrough_options()
    assert options == so.read_sglang_options() == tuple(_real_options().values())
    assert so.passthrough_source() == f"the installed SGLang {so.sglang_version()}"
    parser = argparse.ArgumentParser()
    so.register_passthrough(parser)
    ours = set(parser._option_string_actions)
    for action in server_args_parser()._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or getattr(action, "error_message", None):
            continue
        for spelling in longs:
            assert f"--sglang-{spelling[2:]}" in ours or longs[0][2:] in so._NOT_MIRRORED, spelling


def test_every_mirrored_option_reaches_sglang_with_the_value_sglang_parses():
    """For each option: ``--sglang-NAME VALUE`` through our parser, collect_passthrough and to_cli gives SGLang's
    parser the same field value as ``--NAME VALUE`` given to SGLang directly."""
    options = tuple(_real_options().values())
    parser = argparse.ArgumentParser()
    so.register_passthrough(parser, options)
    checked = []
    for option in options:
        argv = _sample_argv(option)
        if argv is None:
            continue
        ours = parser.parse_args([f"--sglang-{argv[0][2:]}", *argv[1:]])
        passed = so.to_cli(so.collect_passthrough(ours, options))
        dest = _dest(option.name)
        via_us = getattr(_sglang_parse(passed), dest)
        direct = getattr(_sglang_parse(argv), dest)
        assert via_us == direct, (option.name, passed, via_us, direct)
        checked.append(option.name)
    assert len(checked) > 0.9 * len(options), sorted(set(o.name for o in options) - set(checked))


def test_slime_sglang_flags_keep_their_meaning(monkeypatch):
    """slime (head-624b824a8) registers ServerArgs with a --sglang- prefix; each of its flags that our trainer
    accepts sets the same ServerArgs field, and the ones it does not accept are refused by name."""
    import sys
    import types

    from slime_entropy.trainer.arguments import build_parser

    root = slime_tree("head-624b824a8")
    require_sglang()
    # slime's module imports the SGLang router (a Rust package) and slime.utils.http_utils; only RouterArgs'
    # registration is stood in for (the router's flags are slime's, not SGLang server options).
    router = types.ModuleType("sglang_router.launch_router")
    router.RouterArgs = SimpleNamespace(add_cli_args=lambda parser, **kw: None)
    monkeypatch.setitem(sys.modules, "sglang_router", types.ModuleType("sglang_router"))
    monkeypatch.setitem(sys.modules, "sglang_router.launch_router", router)
    http_utils = types.ModuleType("slime.utils.http_utils")
    http_utils._wrap_ipv6 = lambda host: host
    monkeypatch.setitem(sys.modules, "slime.utils.http_utils", http_utils)
    spec = importlib.util.spec_from_file_location(
        "slime_sglang_arguments", root / "slime" / "backends" / "sglang_utils" / "arguments.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    slime_parser = module.add_sglang_arguments(argparse.ArgumentParser(add_help=False))
    ours = build_parser()
    real = {f"--{s[2:]}": a for a in server_args_parser()._actions for s in a.option_strings if s.startswith("--")}
    accepted = refused = 0
    for spelling, action in slime_parser._option_string_actions.items():
        name = spelling.removeprefix("--sglang-")
        if spelling == name or f"--{name}" not in real:
            continue  # slime's own flags (router, concurrency, --sglang-config) are checked by the rollout tests
        field = real[f"--{name}"].dest
        assert action.dest == f"sglang_{field}"
        option = next((o for o in so.passthrough_options() if name in (o.name, *o.aliases)), None)
        if spelling not in ours._option_string_actions:
            refused += 1
            continue
        if isinstance(ours._option_string_actions[spelling], so._Refuse):
            refused += 1
            continue
        argv = _sample_argv(option)
        if argv is None:
            continue
        user = [spelling, *argv[1:]]
        ns = _parses(ours, user)
        assert ns is not None, user
        passed = so.to_cli(so.collect_passthrough(ns))
        assert getattr(_sglang_parse(passed), field) == getattr(_sglang_parse([f"--{name}", *argv[1:]]), field), user
        accepted += 1
    assert accepted > 300 and refused >= 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sglang-cuda-graph-bs", "1", "2"], "--sglang-cuda-graph-bs-decode"),
        (["--sglang-cuda-graph-max-bs", "8"], "--sglang-cuda-graph-max-bs-decode"),
        (["--sglang-tp-size", "2"], "--rollout-num-gpus-per-engine"),
        (["--sglang-port", "3"], "free port"),
        (["--sglang-config", "x.yaml"], "does not support slime's --sglang-config"),
        (["--sglang-mem-fraction-statik", "0.5"], "nearest: --sglang-mem-fraction-static"),
    ],
)
def test_unknown_renamed_and_launcher_owned_options_are_refused(capsys, argv, message):
    """Works with the curated list and with the mirror (no SGLang needed)."""
    from slime_entropy.trainer.arguments import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# engine command lines of the shipped run scripts
# ----------------------------------------------------------------------------------------------------------------

RUN_SCRIPTS = {  # script -> colocated
    "run-qwen3-4B.sh": True,
    "run-qwen3-8B.sh": True,
    "run-qwen3-14B.sh": False,
    "run-qwen3-32B.sh": False,
    "run-qwen3-14B-dapo.sh": False,
}


@pytest.mark.parametrize("offload", ["default", "--offload-rollout", "--no-offload-rollout"])
@pytest.mark.parametrize("script", sorted(RUN_SCRIPTS))
def test_run_script_engines_parse_with_server_args(tmp_path, script, offload):
    from slime_entropy.launch.plan import plan_from_args
    from slime_entropy.rollout.client import EnginePool
    from slime_entropy.rollout.config import EngineConfig
    from slime_entropy.rollout.engine_sglang import engines_on_gpus
    from slime_entropy.rollout.sglang_options import collect_passthrough
    from tests.launch.helpers import REPO, parse_train_args, recorded_argv

    require_sglang()
    extra = () if offload == "default" else (offload,)
    argv = recorded_argv(REPO / "examples" / "high_entropy" / script, tmp_path, args=extra)
    args = parse_train_args(argv)
    layout = plan_from_args(args).cluster
    assert layout.colocate == RUN_SCRIPTS[script]
    tp = args.rollout_num_gpus_per_engine
    engine = EngineConfig(
        backend="sglang",
        hf_checkpoint=args.hf_checkpoint,
        num_engines=layout.rollout_num_gpus // tp,
        num_gpus_per_engine=tp,
        num_gpus_per_node=args.num_gpus_per_node,
        host=args.rollout_engine_host,
        seed=args.rollout_seed,
        sglang_options=collect_passthrough(args),
    )
    # the engines' node: colocated, the training GPUs again; disaggregated, a node of their own (GPUs from 0)
    engine = engines_on_gpus(engine, range(layout.rollout_num_gpus), memory_saver=layout.offload_rollout)
    pool = EnginePool.from_config(engine, tmp_path)
    ports, nccl_ports = set(), set()
    for i, slot in enumerate(pool.slots):
        command = slot.process.command_for_port(30000 + i)
        assert command[1:3] == ["-m", "sglang.launch_server"]
        server = server_args(command[3:])
        assert server.model_path == args.hf_checkpoint and server.host == "127.0.0.1"
        assert server.tp_size == tp and server.base_gpu_id == i * tp and server.port == 30000 + i
        assert server.random_seed == args.rollout_seed + i
        assert server.mem_fraction_static == args.sglang_mem_fraction_static
        assert server.enable_memory_saver == layout.offload_rollout
        ports.add(server.port)
        nccl_ports.add(server.nccl_port)
    assert len(ports) == len(nccl_ports) == len(pool.slots) == 8 // tp
    assert layout.offload_rollout == {"default": RUN_SCRIPTS[script], "--offload-rollout": True}.get(offload, False)


# ----------------------------------------------------------------------------------------------------------------
# request bodies and answers
# ----------------------------------------------------------------------------------------------------------------


def _route_classes() -> dict[str, str]:
    """Route -> request class name, read from the installed SGLang's http_server.py (the ``obj`` parameter)."""
    tree = ast.parse(_sglang_file("srt/entrypoints/http_server.py").read_text())
    routes = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.AsyncFunctionDef):
            continue
        paths = [
            d.args[0].value
            for d in node.decorator_list
            if isinstance(d, ast.Call) and d.args and isinstance(d.args[0], ast.Constant)
        ]
        obj = next((a for a in node.args.args if a.arg == "obj"), None)
        for path in paths:
            if obj is None:
                routes[path] = None
                continue
            annotation = obj.annotation
            if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
                annotation = annotation.slice.elts[0]  # Annotated[Class, Body()]
            routes[path] = ast.unparse(annotation)
    return routes


def sglang_accepts(path: str, body: dict) -> None:
    """SGLang's HTTP server accepts ``body`` on ``path``: the request class is built as FastAPI builds it (pydantic
    validation, types included) and with the class's own constructor, which also refuses unknown and missing
    fields (FastAPI would drop unknown fields silently: a field SGLang does not know is a contract break)."""
    import pydantic

    name = _route_classes()[path]
    if name is None:
        assert body in (None, {}), f"{path} takes no body, got {body}"
        return
    cls = getattr(io_struct(), name)
    pydantic.TypeAdapter(cls).validate_python(body)
    request = cls(**body)
    if path == "/generate":
        from sglang.srt.entrypoints.api_contract import generate_contract_error

        assert generate_contract_error(json.loads(json.dumps(body))) is None
        request.normalize_batch_and_arguments()


def test_route_classes_are_read_from_the_installed_http_server():
    routes = _route_classes()
    assert set(ROUTES_USED) <= set(routes)
    assert routes["/generate"] == "GenerateReqInput" and routes["/flush_cache"] is None
    for path in ROUTES_USED:
        if routes[path] is not None:
            assert hasattr(io_struct(), routes[path]), path


@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate", {"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2}, "bogus": 1}),
        ("/update_weights_from_disk", {"path": "/ckpt"}),
        ("/init_weights_update_group", {"master_address": "h", "master_port": "x", "rank_offset": 1, "world_size": 2}),
        ("/abort_request", {"abort_all": True, "all": True}),
        ("/generate", {"input_ids": [1], "sampling_params": {"max_new_tokens": 2, "sampling_sed": 3}}),
    ],
)
def test_the_check_refuses_what_sglang_would_not_take(path, body):
    with pytest.raises((TypeError, ValueError, AssertionError)):
        sglang_accepts(path, body)


class _Recorder:
    """Every HTTP exchange of the client (EnginePool._request), recorded on its way to the engines."""

    def __init__(self, monkeypatch):
        from slime_entropy.rollout.client import EnginePool

        self.exchanges: list[tuple[str, dict | None, object]] = []
        original = EnginePool._request

        async def request(pool, method, url, body=None, **kwargs):
            answer = await original(pool, method, url, body, **kwargs)
            self.exchanges.append(("/" + url.split("/", 3)[3], body, answer))
            return answer

        monkeypatch.setattr(EnginePool, "_request", request)

    def bodies(self, path: str) -> list:
        return [body for p, body, _ in self.exchanges if p == path]


def test_every_body_the_client_sends_is_accepted_by_sglang(monkeypatch, builtin_engines, math_prompts):
    """The real code paths (a rollout, a disk weight update, offload, abort, pause/continue, flush, the broadcast
    group's bodies) against the built-in engines; each body is then checked with SGLang's request classes, and
    each answer of the built-in engine has the fields SGLang answers with."""
    from slime_entropy.rollout.arguments import add_rollout_arguments
    from slime_entropy.rollout.manager import RolloutManager
    from slime_entropy.rollout.weight_sync import WeightBroadcaster
    from slime_entropy.trainer.ray_actors import RolloutWorker

    require_sglang()
    recorder = _Recorder(monkeypatch)
    argv = ["--hf-checkpoint", str(builtin_engines.model_dir), "--prompt-data", str(math_prompts)]
    argv += ["--input-key", "prompt", "--label-key", "label", "--rollout-max-response-len", "4", "--rm-type", "math"]
    argv += ["--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-stop", "\n\n"]
    argv += ["--rollout-external-engine-addrs", *builtin_engines.addrs]
    args = add_rollout_arguments(argparse.ArgumentParser()).parse_args(argv)
    with RolloutManager.from_args(args, progress=False) as rollout:
        result = rollout.generate(0)
        pool = rollout.pool
        worker = SimpleNamespace(manager=rollout)
        RolloutWorker.release_memory(worker)
        RolloutWorker.resume_memory(worker, ["weights"])
        RolloutWorker.resume_memory(worker, ["kv_cache"])
        rollout.update_weights_from_disk(builtin_engines.model_dir, weight_version="3")
        rollout.run(pool.post_all("/pause_generation"), timeout=60)
        rollout.run(pool.post_all("/continue_generation"), timeout=60)
        rollout.run(pool.post_all("/pause_generation", {"mode": "retract"}), timeout=60)
        rollout.run(pool.post_all("/continue_generation"), timeout=60)
        rollout.run(pool.post_all("/flush_cache"), timeout=60)
        rollout.run(pool.abort_all(), timeout=60)
        broadcaster = WeightBroadcaster(
            pool, master_address="127.0.0.1", master_port=29500, backend="gloo", group_name="g", ranks_per_engine=2
        )
        group_bodies = broadcaster.init_group_bodies()
        update = broadcaster.update_body(["a.weight"], ["bfloat16"], [(2, 3)], weight_version="4", flush_cache=True)
    assert len(result.samples) == 4
    sent = {path for path, _, _ in recorder.exchanges}
    assert set(ROUTES_USED) - sent == {"/init_weights_update_group", "/update_weights_from_distributed"}
    for path, body, _ in recorder.exchanges:
        if path != "/health":
            sglang_accepts(path, body)
    for body in group_bodies:
        sglang_accepts("/init_weights_update_group", body)
    sglang_accepts("/update_weights_from_distributed", update)
    # the answers: what the client reads is what SGLang returns
    for body, answer in [(b, a) for p, b, a in recorder.exchanges if p == "/generate"]:
        outputs = answer.body if isinstance(answer.body, list) else [answer.body]
        assert len(outputs) == len(body["input_ids"])
        for output in outputs:
            assert {"text", "output_ids", "meta_info"} <= set(output)
            meta = output["meta_info"]
            assert meta["finish_reason"]["type"] in ("stop", "length", "abort")
            assert {"id", "prompt_tokens", "completion_tokens", "cached_tokens", "weight_version"} <= set(meta)
            triples = meta["output_token_logprobs"]
            assert [len(t) for t in triples] == [3] * len(triples) and [t[1] for t in triples] == output["output_ids"]
    for _, _, answer in [e for e in recorder.exchanges if e[0] == "/update_weights_from_disk"]:
        assert answer.status == 200 and set(answer.body) == {"success", "message", "num_paused_requests"}


def test_sglang_answers_the_fields_the_client_reads():
    """The keys the client and the rollout manager read, found in the installed SGLang's server and tokenizer
    manager (the built-in engine's answers are checked against the same keys above)."""
    server = _sglang_file("srt/entrypoints/http_server.py").read_text()
    for route, keys in {
        "update_weights_from_disk": ('"success"', '"message"', '"num_paused_requests"'),
        "init_weights_update_group": ('"success"', '"message"'),
        "update_weights_from_distributed": ('"success"', '"message"'),
    }.items():
        body = server.split(f'@app.post("/{route}")', 1)[1].split("@app.", 1)[0]
        for key in keys:
            assert key in body, (route, key)
    manager = _sglang_file("srt/managers/tokenizer_manager.py").read_text()
    for key in ('"output_token_logprobs"', '"finish_reason"', '"weight_version"', '"prompt_tokens"'):
        assert key in manager, key
    assert re.search(r'"text"\s*:', manager) and re.search(r'"output_ids"\s*:', manager)
    assert re.search(r'"meta_info"\s*:', manager)


def test_builtin_engine_sampling_params_are_sglangs():
    """Every sampling parameter the built-in engine takes is one SGLang's /generate contract knows."""
    from slime_entropy.rollout.engine_builtin import SUPPORTED_SAMPLING_PARAMS

    params = {k: v for k, v in SUPPORTED_SAMPLING_PARAMS.items() if v is not None}
    sglang_accepts(
        "/generate", {"input_ids": [1, 2], "sampling_params": {**params, "stop": ["x"], "sampling_seed": 3}}
    )


def test_builtin_engine_pauses_as_sglang(builtin_engines):
    """``/pause_generation`` with SGLang's default mode aborts what is in flight; a mode SGLang does not know is
    refused by both; the answers have SGLang's shape."""
    import httpx
    import pydantic

    require_sglang()
    url = builtin_engines.urls[0]
    with pytest.raises(pydantic.ValidationError):
        sglang_accepts("/pause_generation", {"mode": "later"})

    async def go():
        async with httpx.AsyncClient(timeout=120) as http:
            body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1000, "ignore_eos": True}}
            pending = asyncio.ensure_future(http.post(f"{url}/generate", json=body))
            # Pause while the request is being generated (a fixed sleep raced a fast engine finishing first).
            deadline = time.monotonic() + 60
            while (await http.get(f"{url}/get_server_info")).json()["num_running_requests"] == 0:
                assert not pending.done(), "the request finished before it was seen running"
                assert time.monotonic() < deadline, "the request never started"
                await asyncio.sleep(0.002)
            refused = await http.post(f"{url}/pause_generation", json={"mode": "later"})
            paused = await http.post(f"{url}/pause_generation", json={})
            out = (await pending).json()
            resumed = await http.post(f"{url}/continue_generation", json={})
            return refused, paused.json(), out, resumed.json()

    refused, paused, out, resumed = asyncio.run(go())
    assert refused.status_code == 400
    assert paused == {"message": "Generation paused successfully.", "status": "ok"} and resumed["status"] == "ok"
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and len(out["output_ids"]) < 1000
