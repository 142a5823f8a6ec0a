"""Hugging Face <-> megatron-core weights for dense Qwen3, Qwen2/2.5, Llama-3 and Qwen3-MoE, at any TP/PP/EP.

Why a focused converter and not mbridge 0.15.1: mbridge runs on CPU only with five shims, three of which patch its
internals (it hard-codes the transformer-engine layer spec, knows only TE's fused norm names, and reads
``hf_config.rope_theta``, which transformers 5 moved); it builds its own ``TransformerConfig`` (turning on sequence
parallelism and softmax fusion) and its own DDP-wrapped model, which would bypass our validated flags, our THD
attention on the local spec, and our optimizer; and it fails on megatron-core >= 0.17. The mapping itself is small:
this module works on the model's own parameter names, for both the local and the TE spec, and reads/writes
safetensors directly (no transformers import).

Layouts (Megatron side, per TP rank):

=========================  ===============================================  =====================================
Megatron parameter         HF tensor(s)                                     split over TP (experts: expert-TP)
=========================  ===============================================  =====================================
word_embeddings, output    embed_tokens, lm_head (rows padded to the        rows
                           Megatron vocabulary with zeros)
linear_qkv (+bias)         q_proj, k_proj, v_proj, interleaved per query    rows, whole query groups per rank
                           group: [q heads of group g; k_g; v_g]
linear_fc1                 [gate_proj; up_proj] (SwiGLU)                     rows of gate and of up separately
linear_proj, linear_fc2    o_proj, down_proj                                columns
norms, q/k norms, router   as is                                            replicated
=========================  ===============================================  =====================================

Pipeline stages map their local layers through ``layer.layer_number`` (global, 1-based); expert-parallel ranks own
experts ``ep_rank * num_local_experts + e``. Export gathers TP shards (a collective over the TP / expert-TP group:
every rank of the group must call it, in the same order) and yields exactly the tensors the import consumed, so
HF -> Megatron -> HF is bit-exact when the model dtype equals the checkpoint dtype.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core import parallel_state
from safetensors import safe_open
from safetensors.torch import save_file

from slime_entropy import collectives
from slime_entropy.megatron.architecture import HFArchitecture
from slime_entropy.megatron.groups import ActorGroups

__all__ = [
    "HFCheckpointReader",
    "load_hf_weights",
    "iter_hf_weights",
    "save_hf_checkpoint",
    "unwrap_model",
    "HF_AUX_FILES",
]

logger = logging.getLogger(__name__)

# Files copied from the source HF directory next to exported weights (config and tokenizer).
HF_AUX_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / Float16Module wrappers (each holds the wrapped model in ``.module``)."""
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model


class HFCheckpointReader:
    """Reads tensors by HF name from ``model.safetensors`` or a sharded ``model.safetensors.index.json``."""

    def __init__(self, hf_dir: str | Path):
        self.hf_dir = Path(hf_dir)
        index = self.hf_dir / "model.safetensors.index.json"
        single = self.hf_dir / "model.safetensors"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file_of = {name: self.hf_dir / fname for name, fname in weight_map.items()}
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                self._file_of = {name: single for name in f.keys()}
        else:
            raise ValueError(
                f"--hf-checkpoint {hf_dir}: no model.safetensors or model.safetensors.index.json "
                "(only safetensors checkpoints are supported; re-save with save_pretrained(safe_serialization=True))"
            )
        self._handles: dict[Path, object] = {}

    def names(self) -> set[str]:
        return set(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def get(self, name: str) -> torch.Tensor:
        path = self._file_of.get(name)
        if path is None:
            raise KeyError(f"{self.hf_dir}: tensor {name!r} is not in the checkpoint")
        handle = self._handles.get(path)
        if handle is None:
            handle = safe_open(str(path), framework="pt")
            self._handles[path] = handle
        return handle.get_tensor(name)

    def dtype(self) -> torch.dtype:
        first = next(iter(sorted(self._file_of)))
        return self.get(first).dtype


@dataclass(frozen=True)
class _Rule:
    """How one Megatron parameter maps to HF tensors. ``kind`` selects the layout (see module docstring)."""

    hf_names: tuple[str, ...]
    kind: str  # replicated | vocab | column | row | qkv | glu
    expert: bool = False
    export: bool = True


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_LOCAL_EXPERT = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(linear_fc1|linear_fc2)\.weight$")
_GROUPED_EXPERT = re.compile(r"^mlp\.experts\.(linear_fc1|linear_fc2)\.weight(\d+)$")


class _NameMap:
    def __init__(self, model: torch.nn.Module, arch: HFArchitecture):
        self.arch = arch
        self.global_layer = {}
        if hasattr(model, "decoder"):
            for local, layer in enumerate(model.decoder.layers):
                self.global_layer[local] = layer.layer_number - 1
        ep_rank = parallel_state.get_expert_model_parallel_rank()
        ep_size = parallel_state.get_expert_model_parallel_world_size()
        self.num_local_experts = (arch.num_experts or 0) // ep_size
        self.expert_offset = ep_rank * self.num_local_experts

    def rule(self, name: str) -> _Rule:
        arch = self.arch
        if name == "embedding.word_embeddings.weight":
            return _Rule(("model.embed_tokens.weight",), "vocab")
        if name == "output_layer.weight":
            if arch.tie_word_embeddings:  # last pipeline stage's copy of the tied embedding
                return _Rule(("model.embed_tokens.weight",), "vocab", export=False)
            return _Rule(("lm_head.weight",), "vocab")
        if name == "decoder.final_layernorm.weight":
            return _Rule(("model.norm.weight",), "replicated")
        match = _LAYER.match(name)
        if match is None:
            raise KeyError(f"no HF mapping for Megatron parameter {name!r}")
        layer, rest = self.global_layer[int(match.group(1))], match.group(2)
        hf = f"model.layers.{layer}."
        attn = hf + "self_attn."
        if rest in ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"):
            return _Rule((hf + "input_layernorm.weight",), "replicated")
        if rest in ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"):
            return _Rule((hf + "post_attention_layernorm.weight",), "replicated")
        if rest == "self_attention.linear_qkv.weight":
            return _Rule((attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"), "qkv")
        if rest == "self_attention.linear_qkv.bias":
            return _Rule((attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"), "qkv")
        if rest == "self_attention.q_layernorm.weight":
            return _Rule((attn + "q_norm.weight",), "replicated")
        if rest == "self_attention.k_layernorm.weight":
            return _Rule((attn + "k_norm.weight",), "replicated")
        if rest == "self_attention.linear_proj.weight":
            return _Rule((attn + "o_proj.weight",), "row")
        if rest == "mlp.linear_fc1.weight":
            return _Rule((hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"), "glu")
        if rest == "mlp.linear_fc2.weight":
            return _Rule((hf + "mlp.down_proj.weight",), "row")
        if rest == "mlp.router.weight":
            return _Rule((hf + "mlp.gate.weight",), "replicated")
        local = _LOCAL_EXPERT.match(rest)
        grouped = _GROUPED_EXPERT.match(rest)
        if local or grouped:
            local_expert, fc = (
                (int(local.group(1)), local.group(2)) if local else (int(grouped.group(2)), grouped.group(1))
            )
            ex = f"{hf}mlp.experts.{self.expert_offset + local_expert}."
            if fc == "linear_fc1":
                return _Rule((ex + "gate_proj.weight", ex + "up_proj.weight"), "glu", expert=True)
            return _Rule((ex + "down_proj.weight",), "row", expert=True)
        raise KeyError(f"no HF mapping for Megatron parameter {name!r}")


def _tp(expert: bool) -> tuple[int, int, object]:
    """(rank, size, group) of the tensor-parallel group that splits this parameter."""
    if expert:
        return (
            parallel_state.get_expert_tensor_parallel_rank(),
            parallel_state.get_expert_tensor_parallel_world_size(),
            parallel_state.get_expert_tensor_parallel_group(check_initialized=False),
        )
    return (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_world_size(),
        parallel_state.get_tensor_model_parallel_group(),
    )


def _qkv_full(arch: HFArchitecture, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HF q/k/v (weight [out, H] or bias [out]) -> Megatron's per-group interleaved [groups*(q_per_group+2)*d, ...]."""
    groups, d = arch.num_query_groups, arch.kv_channels
    q_per_group = arch.num_attention_heads // groups
    tail = q.shape[1:]
    q = q.reshape(groups, q_per_group * d, *tail)
    k = k.reshape(groups, d, *tail)
    v = v.reshape(groups, d, *tail)
    return torch.cat([q, k, v], dim=1).reshape(groups * (q_per_group + 2) * d, *tail)


def _qkv_split(arch: HFArchitecture, full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups, d = arch.num_query_groups, arch.kv_channels
    q_per_group = arch.num_attention_heads // groups
    tail = full.shape[1:]
    per_group = full.reshape(groups, (q_per_group + 2) * d, *tail)
    q, k, v = torch.split(per_group, [q_per_group * d, d, d], dim=1)
    return (
        q.reshape(groups * q_per_group * d, *tail).contiguous(),
        k.reshape(groups * d, *tail).contiguous(),
        v.reshape(groups * d, *tail).contiguous(),
    )


def _shard_for_rank(rule: _Rule, arch: HFArchitecture, hf: list[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """This rank's Megatron shard of shape ``shape`` built from the full HF tensors ``hf``."""
    rank, size, _ = _tp(rule.expert)
    if rule.kind == "replicated":
        return hf[0]
    if rule.kind == "vocab":
        full = hf[0]
        padded_rows = shape[0] * size
        if padded_rows < full.shape[0]:
            raise ValueError(f"Megatron vocabulary {padded_rows} is smaller than the checkpoint's {full.shape[0]}")
        if padded_rows > full.shape[0]:
            full = torch.cat([full, full.new_zeros(padded_rows - full.shape[0], *full.shape[1:])])
        return full.chunk(size, dim=0)[rank]
    if rule.kind == "row":
        return hf[0].chunk(size, dim=1)[rank]
    if rule.kind == "glu":
        gate, up = hf
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)
    if rule.kind == "qkv":
        return _qkv_full(arch, *hf).chunk(size, dim=0)[rank]
    raise AssertionError(rule.kind)


def _full_from_shards(rule: _Rule, arch: HFArchitecture, shard: torch.Tensor) -> list[torch.Tensor]:
    """Gather this parameter over its TP group and return the HF tensors (collective for split kinds)."""
    if rule.kind == "replicated":
        return [shard.detach().clone()]
    _, size, group = _tp(rule.expert)
    shards = collectives.all_gather_stacked(shard.detach().contiguous(), group if size > 1 else None)
    if rule.kind == "vocab":
        full = torch.cat(list(shards), dim=0)
        return [full[: arch.vocab_size].contiguous()]
    if rule.kind == "row":
        return [torch.cat(list(shards), dim=1).contiguous()]
    if rule.kind == "glu":
        gates, ups = zip(*(s.chunk(2, dim=0) for s in shards), strict=True)
        return [torch.cat(gates, dim=0).contiguous(), torch.cat(ups, dim=0).contiguous()]
    if rule.kind == "qkv":
        return list(_qkv_split(arch, torch.cat(list(shards), dim=0)))
    raise AssertionError(rule.kind)


@torch.no_grad()
def load_hf_weights(model: torch.nn.Module, arch: HFArchitecture, hf_dir: str | Path) -> None:
    """Copy the HF checkpoint's weights into this rank's (unwrapped) GPTModel shards.

    Every parameter must be found and every shape must match; a missing tensor or a shape mismatch raises
    ``ValueError`` naming it. No communication: each rank reads the tensors it needs.
    """
    model = unwrap_model(model)
    reader = HFCheckpointReader(hf_dir)
    names = _NameMap(model, arch)
    errors = []
    for name, param in model.named_parameters():
        rule = names.rule(name)
        missing = [n for n in rule.hf_names if n not in reader]
        if missing:
            errors.append(f"{name}: missing {missing}")
            continue
        shard = _shard_for_rank(rule, arch, [reader.get(n) for n in rule.hf_names], param.shape)
        if shard.shape != param.shape:
            errors.append(f"{name}: Megatron shard {tuple(param.shape)} but the checkpoint gives {tuple(shard.shape)}")
            continue
        param.copy_(shard)
    if errors:
        raise ValueError(f"--hf-checkpoint {hf_dir} does not fit the model:\n  - " + "\n  - ".join(errors))


@torch.no_grad()
def iter_hf_weights(
    model: torch.nn.Module, arch: HFArchitecture, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full tensor)`` for every parameter on this pipeline stage / expert-parallel rank.

    A collective over each split parameter's TP (or expert-TP) group: all ranks of those groups must iterate to the
    end together. Ranks of one TP group yield identical tensors. ``dtype``: cast (default: the parameter dtype).
    """
    model = unwrap_model(model)
    names = _NameMap(model, arch)
    for name, param in model.named_parameters():
        rule = names.rule(name)
        tensors = _full_from_shards(rule, arch, param)
        if not rule.export:
            continue
        for hf_name, tensor in zip(rule.hf_names, tensors, strict=True):
            yield hf_name, (tensor if dtype is None else tensor.to(dtype)).cpu()


def _is_writer(expert: bool) -> bool:
    """One rank writes each tensor: TP rank 0 of the first data-parallel replica (expert: of the expert group)."""
    if expert:
        return (
            parallel_state.get_expert_tensor_parallel_rank() == 0
            and parallel_state.get_expert_data_parallel_rank() == 0
        )
    return (
        parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0
    )


def save_hf_checkpoint(
    model: torch.nn.Module,
    arch: HFArchitecture,
    out_dir: str | Path,
    source_hf_dir: str | Path,
    dtype: torch.dtype | None = None,
    groups: ActorGroups | None = None,
) -> Path:
    """Write an HF checkpoint (safetensors + config/tokenizer copied from ``source_hf_dir``) of the current weights.

    Collective over the whole world. Each pipeline stage / expert-parallel rank writes its own shard into a
    temporary directory next to ``out_dir``; global rank 0 then writes the index, copies the config and tokenizer
    files and renames the directory into place, so ``out_dir`` is either the previous complete checkpoint or the
    new complete one. Needs a filesystem shared by all ranks (as torch_dist checkpoints do).
    """
    out_dir = Path(out_dir)
    groups = groups or ActorGroups.from_megatron()
    rank = groups.global_rank
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{groups.shared_token()}"
    if rank == 0:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    groups.barrier()
    names = _NameMap(unwrap_model(model), arch)
    local: dict[str, torch.Tensor] = {}
    for name, param in unwrap_model(model).named_parameters():
        rule = names.rule(name)
        tensors = _full_from_shards(rule, arch, param)
        if rule.export and _is_writer(rule.expert):
            for hf_name, tensor in zip(rule.hf_names, tensors, strict=True):
                local[hf_name] = (tensor if dtype is None else tensor.to(dtype)).cpu().contiguous()
    if local:
        save_file(local, str(tmp / f"part-{rank:05d}.safetensors"), metadata={"format": "pt"})
    groups.barrier()
    if rank == 0:
        _finalize_hf_dir(tmp, out_dir, Path(source_hf_dir))
    groups.barrier()
    return out_dir


def _finalize_hf_dir(tmp: Path, out_dir: Path, source: Path) -> None:
    parts = sorted(tmp.glob("part-*.safetensors"))
    weight_map: dict[str, str] = {}
    total = 0
    if len(parts) == 1:
        parts[0].rename(tmp / "model.safetensors")
        parts = [tmp / "model.safetensors"]
    else:
        renamed = []
        for i, part in enumerate(parts):
            target = tmp / f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
            part.rename(target)
            renamed.append(target)
        parts = renamed
    for part in parts:
        with safe_open(str(part), framework="pt") as f:
            for key in f.keys():
                if key in weight_map:
                    raise RuntimeError(f"tensor {key} written twice ({weight_map[key]} and {part.name})")
                weight_map[key] = part.name
                tensor_slice = f.get_slice(key)
                numel = 1
                for dim in tensor_slice.get_shape():
                    numel *= dim
                total += numel * torch.empty((), dtype=_dtype_of(tensor_slice.get_dtype())).element_size()
    if len(parts) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for fname in HF_AUX_FILES:
        if (source / fname).is_file():
            shutil.copy2(source / fname, tmp / fname)
    for path in tmp.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old)
    logger.info("wrote HF checkpoint %s (%d tensors in %d file(s))", out_dir, len(weight_map), len(parts))


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _dtype_of(code: str) -> torch.dtype:
    return _SAFETENSORS_DTYPES[code]
