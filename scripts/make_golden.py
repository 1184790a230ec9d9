#!/usr/bin/env python3
"""Generate HF transformers reference ("golden") data for mtpserve's Gemma 4 parity tests.

Usage:
    python3 scripts/make_golden.py [--out tests/data/golden] [--device cuda|cpu] [--seed 1234]

Needs: python 3.12, torch, transformers 5.17 (Gemma4ForCausalLM, Gemma4ForConditionalGeneration,
Gemma4AssistantForCausalLM, ...), safetensors, numpy.  No network.

What it writes (all under --out; see the README.md it writes there for the full format):
  <variant>/text/           Gemma4ForCausalLM.save_pretrained (model_type gemma4_text)
  <variant>/mm/             Gemma4ForConditionalGeneration.save_pretrained (vision/audio None)
  <variant>/config_flat.json  the text config in the older flat form (global_head_dim, ...)
  <variant>/golden.json + *.f32   fp32-eager / bf16-sdpa logits, hidden, greedy generations
  assistant_<target>_<dense|centroid>/model/   Gemma4AssistantForCausalLM.save_pretrained
  assistant_<target>_<dense|centroid>/golden.json + *.f32   3 chained drafter steps per prompt
  README.md

Every model is a tiny random model whose weights are bf16-exact; initialisation is scaled so
that logits are peaked (top-2 margins are printed).  Deterministic given --seed.
Shape/loading problems raise; optional checks only warn (collected and printed at the end,
and recorded in the golden.json files under "checks").
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
import traceback

import numpy as np
import torch

import transformers
from transformers import (
    Gemma4AssistantConfig,
    Gemma4AssistantForCausalLM,
    Gemma4Config,
    Gemma4ForCausalLM,
    Gemma4ForConditionalGeneration,
    Gemma4TextConfig,
)
import safetensors
import safetensors.torch as sft

# --------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------
VOCAB = 512
PAD, EOS, BOS = 0, 1, 2
PROMPT_ID_LO, PROMPT_ID_HI = 3, 500  # prompt ids in [3, 500)
TARGET_PROMPT_LENS = (5, 37, 70)
GREEDY_PROMPTS = (0, 1)
GREEDY_NEW_TOKENS = 12
ASSIST_PROMPT_LENS = (5, 30, 45)
ASSIST_STEPS = 3

# multimodal placeholder ids of the wrapper config: all inside [500, 511], never used in prompts
MM_TOKEN_IDS = {
    "boi_token_id": 500,
    "eoi_token_id": 501,
    "image_token_id": 502,
    "video_token_id": 503,
    "boa_token_id": 504,
    "eoa_token_index": 505,
    "eoa_token_id": 505,  # only passed if this transformers' Gemma4Config has such a field
    "audio_token_id": 506,
}

S, F = "sliding_attention", "full_attention"

ROPE_E = {
    S: {"rope_type": "default", "rope_theta": 10000.0},
    F: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
}

# Per-variant text configs.  `global_head_dim` / `num_global_key_value_heads` are the "flat"
# kwargs that Gemma4TextConfig.__post_init__ pops and folds into `per_layer_config`.
VARIANTS = {
    "e_style": dict(
        hidden_size=64,
        num_hidden_layers=8,
        layer_types=[S, S, S, F, S, S, S, F],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        global_head_dim=64,
        num_global_key_value_heads=None,
        attention_k_eq_v=False,
        sliding_window=16,
        hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=512,
        num_kv_shared_layers=3,
        use_double_wide_mlp=True,
        intermediate_size=96,
        enable_moe_block=False,
        rope_parameters=ROPE_E,
        final_logit_softcapping=30.0,
        use_bidirectional_attention=None,
    ),
    "k_eq_v_style": dict(
        hidden_size=64,
        num_hidden_layers=6,
        layer_types=[S, S, F, S, S, F],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        global_head_dim=64,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        sliding_window=16,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=512,
        num_kv_shared_layers=0,
        use_double_wide_mlp=False,
        intermediate_size=48,
        enable_moe_block=False,
        rope_parameters=ROPE_E,
        final_logit_softcapping=30.0,
        use_bidirectional_attention="vision",  # as in the real 31B/26B configs; text-only => plain causal
    ),
    "moe_style": dict(
        hidden_size=64,
        num_hidden_layers=6,
        layer_types=[S, S, F, S, S, F],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        global_head_dim=64,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        sliding_window=16,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=512,
        num_kv_shared_layers=0,
        use_double_wide_mlp=False,
        intermediate_size=48,
        enable_moe_block=True,
        num_experts=8,
        top_k_experts=2,
        moe_intermediate_size=16,
        rope_parameters=ROPE_E,
        final_logit_softcapping=30.0,
        use_bidirectional_attention="vision",
    ),
    "irregular": dict(
        hidden_size=32,
        num_hidden_layers=7,
        layer_types=[S, F, S, S, F, S, F],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=48,
        num_global_key_value_heads=None,
        attention_k_eq_v=False,
        sliding_window=4,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=512,
        num_kv_shared_layers=2,
        use_double_wide_mlp=False,
        intermediate_size=32,
        enable_moe_block=False,
        rope_parameters={
            S: {"rope_type": "default", "rope_theta": 10000.0},
            F: {"rope_type": "proportional", "partial_rotary_factor": 0.5, "rope_theta": 1000000.0, "factor": 2.0},
        },
        final_logit_softcapping=None,
        use_bidirectional_attention=None,
    ),
}
VARIANT_NOTES = {
    "e_style": "E2B/E4B-like: PLE, KV sharing (3 shared layers), double-wide MLP, softcap 30",
    "k_eq_v_style": "31B-like: attention_k_eq_v (full layers: 1 KV head, V from k_proj), no PLE, no sharing",
    "moe_style": "26B-A4B-like: k_eq_v + MoE block (8 experts, top-2) in parallel with a dense MLP",
    "irregular": "odd shapes: window 4, head_dim 16/48, proportional RoPE p=0.5 factor 2, no softcap, "
    "2 KV-shared layers; text/ saved in float32, mm/ sharded",
}
SAVE_FP32 = {"irregular"}
SHARD_MM = {"irregular"}

ASSISTANT_TARGETS = ("e_style", "k_eq_v_style")
ASSISTANT_KINDS = ("dense", "centroid")

# initialisation (see init_weights_)
EMB_K = 1.0  # embed std = EMB_K / sqrt(H)  -> scaled input embeddings have per-element std ~EMB_K
FINAL_NORM_GAIN = 6.0  # final norm weight ~ 6 * U(0.7, 1.3) -> logit std ~ 6 (peaked)
ROUTER_STD = 4.0  # router logits std ~4 -> top-k routing robust to bf16 noise
QK_NORM_SCALE = 0.4  # q_norm/k_norm weights ~ 0.4 * U(0.7, 1.3): attention logits std ~1 (less chaotic
#                      than unit weights, so fp32 and bf16 runs stay close)
CENTROID_K = 2.0

WARNINGS = []


def log(msg):
    print(f"[make_golden {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def warn(msg):
    WARNINGS.append(msg)
    print(f"[make_golden WARNING] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def write_f32(path, tensor):
    arr = tensor.detach().to(torch.float32).cpu().contiguous().numpy().astype("<f4", copy=False)
    arr.tofile(path)
    return list(arr.shape)


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(jsonable(obj), f, indent=1)
        f.write("\n")


def bf16_exact_(t):
    if t.is_floating_point():
        t.copy_(t.to(torch.bfloat16).to(t.dtype))


def top2_margin(logits_2d):
    """logits [T, V] -> top1 - top2 per row (float32 numpy)."""
    v = torch.topk(logits_2d.float(), 2, dim=-1).values
    return (v[:, 0] - v[:, 1]).cpu().numpy()


def make_text_config(spec):
    kw = dict(spec)
    kw.update(vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, tie_word_embeddings=True)
    kw["layer_types"] = list(kw["layer_types"])
    kw["rope_parameters"] = copy.deepcopy(kw["rope_parameters"])
    return Gemma4TextConfig(**kw)


def config_field_names(cls):
    names = set(getattr(cls, "__dataclass_fields__", {}).keys())
    return names


def make_mm_config(spec):
    text_cfg = make_text_config(spec)
    fields = config_field_names(Gemma4Config)
    kw = {}
    for k, v in MM_TOKEN_IDS.items():
        if not fields or k in fields:
            kw[k] = v
    if fields and "eoa_token_id" not in fields:
        log("  (Gemma4Config has no 'eoa_token_id' field; using eoa_token_index only)")
    return Gemma4Config(text_config=text_cfg, vision_config=None, audio_config=None, **kw)


def build_model(cls, cfg):
    """Instantiate in fp32 on CPU with eager attention."""
    try:
        model = cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    except TypeError:
        try:
            model = cls._from_config(cfg, attn_implementation="eager", torch_dtype=torch.float32)
        except TypeError:
            cfg._attn_implementation = "eager"
            model = cls(cfg)
    model = model.to(torch.float32)
    model.eval()
    return model


def load_model(cls, path, dtype, device, attn=None, expect_unexpected=(), what=""):
    kw = dict(dtype=dtype, output_loading_info=True)
    if attn is not None:
        kw["attn_implementation"] = attn
    model, info = cls.from_pretrained(path, **kw)
    model = model.to(device).eval()
    info = info if isinstance(info, dict) else {}
    missing = set(info.get("missing_keys", []) or [])
    unexpected = set(info.get("unexpected_keys", []) or [])
    mismatched = list(info.get("mismatched_keys", []) or [])
    errors = list(info.get("error_msgs", []) or [])
    missing_eff = {k for k in missing if not k.endswith("lm_head.weight")}
    allowed = set(expect_unexpected)
    bad_unexpected = unexpected - allowed
    if missing_eff or bad_unexpected or mismatched or errors:
        raise RuntimeError(
            f"loading {what or path}: missing={sorted(missing_eff)} unexpected={sorted(bad_unexpected)} "
            f"mismatched={mismatched} errors={errors}"
        )
    return model, unexpected


def check_close(name, a, b, atol):
    d = (a.float() - b.float()).abs().max().item()
    if not (d <= atol):
        raise RuntimeError(f"{name}: max abs diff {d:.3e} > {atol:.1e}")
    return d


def dir_size(path):
    tot = 0
    for root, _, files in os.walk(path):
        for fn in files:
            tot += os.path.getsize(os.path.join(root, fn))
    return tot


# --------------------------------------------------------------------------------------------
# expected layer geometry (independent of HF's config internals)
# --------------------------------------------------------------------------------------------
def layer_geometry(spec):
    L = spec["num_hidden_layers"]
    lt = spec["layer_types"]
    first_shared = L - spec.get("num_kv_shared_layers", 0)
    geo = []
    for i in range(L):
        full = lt[i] == F
        D = spec["global_head_dim"] if full else spec["head_dim"]
        kvh = spec["num_global_key_value_heads"] if (full and spec["attention_k_eq_v"]) else spec["num_key_value_heads"]
        shared = i >= first_shared
        width = spec["intermediate_size"] * (2 if (spec.get("use_double_wide_mlp") and shared and first_shared > 0) else 1)
        geo.append(dict(type=lt[i], head_dim=D, kv_heads=kvh, shared=shared, mlp_width=width,
                        has_v_proj=not (full and spec["attention_k_eq_v"])))
    return geo


def kv_source_layers(spec):
    L = spec["num_hidden_layers"]
    lt = spec["layer_types"]
    first_shared = L - spec.get("num_kv_shared_layers", 0)
    prev = lt[:first_shared]
    out = {}
    for t in (S, F):
        if t in prev:
            out[t] = len(prev) - 1 - prev[::-1].index(t)
    return out


def expected_inv_freq(rope, head_dim):
    base = float(rope["rope_theta"])
    if rope["rope_type"] == "default":
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if rope["rope_type"] == "proportional":
        p = rope.get("partial_rotary_factor", 1.0)
        n = int(p * head_dim // 2)
        rot = 1.0 / (base ** (torch.arange(0, 2 * n, 2, dtype=torch.float32) / head_dim))
        inv = torch.cat([rot, torch.zeros(head_dim // 2 - n)])
        return inv / rope.get("factor", 1.0)
    raise ValueError(rope["rope_type"])


def check_shapes(model, spec, prefix, what):
    """Raise unless every attention/MLP tensor has the geometry implied by the spec."""
    sd = model.state_dict()
    H = spec["hidden_size"]
    nh = spec["num_attention_heads"]
    for i, g in enumerate(layer_geometry(spec)):
        p = f"{prefix}layers.{i}."
        exp = {
            "self_attn.q_proj.weight": (nh * g["head_dim"], H),
            "self_attn.o_proj.weight": (H, nh * g["head_dim"]),
            "self_attn.q_norm.weight": (g["head_dim"],),
            "mlp.gate_proj.weight": (g["mlp_width"], H),
            "mlp.down_proj.weight": (H, g["mlp_width"]),
            "layer_scalar": (1,),
        }
        if not g["shared"]:
            exp["self_attn.k_proj.weight"] = (g["kv_heads"] * g["head_dim"], H)
            exp["self_attn.k_norm.weight"] = (g["head_dim"],)
        for k, shp in exp.items():
            if p + k not in sd:
                raise RuntimeError(f"{what}: missing tensor {p + k}")
            if tuple(sd[p + k].shape) != shp:
                raise RuntimeError(f"{what}: {p + k} has shape {tuple(sd[p + k].shape)}, expected {shp}")
        has_v = (p + "self_attn.v_proj.weight") in sd
        if has_v != (g["has_v_proj"] and not g["shared"]):
            raise RuntimeError(f"{what}: layer {i} v_proj presence {has_v} unexpected")
        if g["shared"] and (p + "self_attn.k_proj.weight") in sd:
            raise RuntimeError(f"{what}: KV-shared layer {i} unexpectedly has k_proj")


# --------------------------------------------------------------------------------------------
# initialisation: bf16-exact, non-unit norms / layer_scalar, peaked logits
# --------------------------------------------------------------------------------------------
def init_weights_(model, gen, hidden_size, final_norm_keys, ple_dim=0, centroid_hidden=None):
    sd = model.state_dict(keep_vars=True)
    tied_skip = {k for k in sd if k.endswith("lm_head.weight")}
    done = set()
    with torch.no_grad():
        for name in sorted(sd.keys()):
            if name in tied_skip:
                continue
            t = sd[name]
            shape = tuple(t.shape)

            def normal(std):
                return torch.randn(shape, generator=gen, dtype=torch.float32) * std

            def uniform(lo, hi):
                return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float32)

            if name.endswith("token_ordering"):
                val = torch.randperm(shape[0], generator=gen).to(t.dtype)
            elif name.endswith("layer_scalar"):
                val = uniform(0.5, 1.5)
            elif name.endswith("embed_tokens_per_layer.weight"):
                val = normal(1.0 / math.sqrt(ple_dim))
            elif name.endswith("embed_tokens.weight"):
                val = normal(EMB_K / math.sqrt(shape[1]))
            elif name.endswith("router.scale") or name.endswith("router.per_expert_scale"):
                val = uniform(0.5, 1.5)
            elif name.endswith("router.proj.weight"):
                val = normal(ROUTER_STD)
            elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                val = normal(1.0 / math.sqrt(shape[-1]))
            elif name.endswith("centroids.weight"):
                val = normal(CENTROID_K / math.sqrt(shape[1]))
            elif len(shape) == 1 and "norm" in name and name.endswith(".weight"):
                val = uniform(0.7, 1.3)
                if name.endswith("q_norm.weight") or name.endswith("k_norm.weight"):
                    val = val * QK_NORM_SCALE
                if name in final_norm_keys:
                    val = val * FINAL_NORM_GAIN
            elif len(shape) == 2 and name.endswith(".weight"):
                val = normal(1.0 / math.sqrt(shape[1]))
            else:
                raise RuntimeError(f"init: don't know how to initialise {name} {shape} {t.dtype}")
            t.data.copy_(val.to(t.dtype))
            bf16_exact_(t.data)
            done.add(name)
    # tied head
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if tied_skip:
        emb = model.model.embed_tokens.weight
        head = model.lm_head.weight
        if head.data_ptr() != emb.data_ptr() and not torch.equal(head, emb):
            raise RuntimeError("lm_head is not tied to model.embed_tokens after init")
    return done


# --------------------------------------------------------------------------------------------
# target variants
# --------------------------------------------------------------------------------------------
def make_prompts(rng, lens):
    out = []
    for n in lens:
        ids = [BOS] + [int(x) for x in rng.integers(PROMPT_ID_LO, PROMPT_ID_HI, size=n - 1)]
        out.append(ids)
    return out


@torch.no_grad()
def forward_logits(model, ids, device, **kw):
    x = torch.tensor([ids], dtype=torch.long, device=device)
    return model(input_ids=x, use_cache=False, **kw)


def greedy(model, ids, device):
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        do_sample=False,
        max_new_tokens=GREEDY_NEW_TOKENS,
        use_cache=True,
        pad_token_id=PAD,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    seq = out.sequences[0, len(ids):].tolist()
    steps = getattr(out, "logits", None) or getattr(out, "scores", None)
    margins = []
    for s in steps:
        v = torch.topk(s[0].float(), 2).values
        margins.append(float(v[0] - v[1]))
    return seq, margins[: len(seq)]


def save_with_dtype(model, path, dtype, **kw):
    m = copy.deepcopy(model)
    m = m.to(dtype)
    # keep the nested text_config's "dtype" consistent with the stored weights (HF only updates the top level)
    for c in {id(m.config): m.config, id(m.config.get_text_config()): m.config.get_text_config()}.values():
        try:
            c.dtype = dtype
        except Exception as e:  # cosmetic only
            warn(f"could not set config dtype: {e!r}")
    m.save_pretrained(path, **kw)
    del m


def build_target(name, spec, seed, out_dir, device):
    """Build, save (text/, mm/, config_flat.json) and verify one target variant.
    Returns (in-memory fp32 text model on device, checks dict)."""
    checks = {}
    vdir = os.path.join(out_dir, name)
    if os.path.isdir(vdir):
        shutil.rmtree(vdir)
    os.makedirs(vdir)
    text_dir = os.path.join(vdir, "text")
    mm_dir = os.path.join(vdir, "mm")

    # ---- config: drop rope "factor" if this transformers ignores it
    spec = copy.deepcopy(spec)
    cfg = make_text_config(spec)
    model = build_model(Gemma4ForCausalLM, cfg)
    rot = model.model.rotary_emb
    inv_ok = {}
    for t, rope in spec["rope_parameters"].items():
        if t not in spec["layer_types"]:
            continue
        D = spec["global_head_dim"] if t == F else spec["head_dim"]
        got = getattr(rot, f"{t}_inv_freq").detach().float().cpu()
        exp = expected_inv_freq(rope, D)
        if got.shape == exp.shape and torch.allclose(got, exp, rtol=1e-6, atol=0):
            inv_ok[t] = True
            continue
        if "factor" in rope:
            exp_nofactor = expected_inv_freq({k: v for k, v in rope.items() if k != "factor"}, D)
            if got.shape == exp_nofactor.shape and torch.allclose(got, exp_nofactor, rtol=1e-6, atol=0):
                warn(f"{name}: transformers ignores rope 'factor' for {t}; dropping it from the config")
                del spec["rope_parameters"][t]["factor"]
                cfg = make_text_config(spec)
                model = build_model(Gemma4ForCausalLM, cfg)
                rot = model.model.rotary_emb
                inv_ok[t] = True
                continue
        warn(f"{name}: HF {t} inv_freq differs from the documented formula: got {got.tolist()} expected {exp.tolist()}")
        inv_ok[t] = False
    checks["inv_freq_matches_doc_formula"] = inv_ok

    check_shapes(model, spec, "model.", f"{name} (in-memory)")
    gen = torch.Generator().manual_seed(seed)
    init_weights_(model, gen, spec["hidden_size"], {"model.norm.weight"}, ple_dim=spec["hidden_size_per_layer_input"])
    model = model.to(device)

    # ---- text/
    dtype_save = torch.float32 if name in SAVE_FP32 else torch.bfloat16
    save_with_dtype(model, text_dir, dtype_save)
    log(f"  saved {text_dir} ({dtype_save})")

    # ---- mm/
    mm_cfg = make_mm_config(spec)
    mm = build_model(Gemma4ForConditionalGeneration, mm_cfg)
    lm = mm.model.language_model
    res = lm.load_state_dict(model.model.state_dict(), strict=True)
    if hasattr(mm, "tie_weights"):
        mm.tie_weights()
    if not torch.equal(mm.lm_head.weight.detach().cpu(), lm.embed_tokens.weight.detach().cpu()):
        raise RuntimeError(f"{name}: mm lm_head not tied to language_model.embed_tokens")
    check_shapes(mm, spec, "model.language_model.", f"{name} mm (in-memory)")
    mm = mm.to(device)
    save_kw = {}
    if name in SHARD_MM:
        sizes = [v.numel() * 4 for v in mm.state_dict().values()]  # fp32 bytes (upper bound for bf16)
        total_b = sum(sizes) * (2 if dtype_save == torch.bfloat16 else 4) // 4
        biggest = max(sizes) * (2 if dtype_save == torch.bfloat16 else 4) // 4
        shard = max(biggest + 1, total_b // 5)
        save_kw["max_shard_size"] = int(shard)
    save_with_dtype(mm, mm_dir, dtype_save, **save_kw)
    log(f"  saved {mm_dir} ({dtype_save}{', max_shard_size=%d' % save_kw['max_shard_size'] if save_kw else ''})")
    if name in SHARD_MM:
        idx = os.path.join(mm_dir, "model.safetensors.index.json")
        if not os.path.isfile(idx):
            raise RuntimeError(f"{name}: expected a sharded checkpoint with {idx}")
        nshards = len(set(json.load(open(idx))["weight_map"].values()))
        if nshards < 3:
            raise RuntimeError(f"{name}: only {nshards} shards written (wanted >= 3)")
        checks["mm_shards"] = nshards
        log(f"  mm/ has {nshards} shards")

    # ---- e_style/mm: add the unused k/v/k_norm tensors of the KV-shared layers
    extras = set()
    if name == "e_style":
        st_path = os.path.join(mm_dir, "model.safetensors")
        if not os.path.isfile(st_path):
            raise RuntimeError(f"{name}: expected single-file {st_path}")
        with safetensors.safe_open(st_path, framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = sft.load_file(st_path)
        meta["format"] = "pt"
        g2 = torch.Generator().manual_seed(seed + 777)
        H = spec["hidden_size"]
        for i, g in enumerate(layer_geometry(spec)):
            if not g["shared"]:
                continue
            p = f"model.language_model.layers.{i}.self_attn."
            kv_out = g["kv_heads"] * g["head_dim"]
            add = {
                p + "k_proj.weight": torch.randn(kv_out, H, generator=g2) / math.sqrt(H),
                p + "k_norm.weight": 0.7 + 0.6 * torch.rand(g["head_dim"], generator=g2),
            }
            if g["has_v_proj"]:
                add[p + "v_proj.weight"] = torch.randn(kv_out, H, generator=g2) / math.sqrt(H)
            for k, v in add.items():
                if k in tensors:
                    raise RuntimeError(f"{name}: {k} already in the saved checkpoint")
                tensors[k] = v.to(torch.bfloat16).contiguous()
                extras.add(k)
        sft.save_file(tensors, st_path, metadata=meta)
        log(f"  e_style/mm: added {len(extras)} unused KV-shared-layer tensors to model.safetensors")
        checks["mm_unused_shared_layer_tensors"] = sorted(extras)

    # ---- config_flat.json
    try:
        with open(os.path.join(text_dir, "config.json")) as f:
            text_json = json.load(f)
        flat = dict(text_json)
        plc = flat.pop("per_layer_config", None)
        if plc is None:
            warn(f"{name}: saved text config.json has no per_layer_config (form: {sorted(text_json.keys())})")
        else:
            for k, ov in plc.items():
                extra_keys = set(ov.keys()) - {"head_dim", "num_key_value_heads"}
                if extra_keys:
                    raise RuntimeError(f"{name}: per_layer_config[{k}] has keys the flat form cannot express: {extra_keys}")
        flat["global_head_dim"] = spec["global_head_dim"]
        flat["num_global_key_value_heads"] = spec["num_global_key_value_heads"]
        flat_path = os.path.join(vdir, "config_flat.json")
        write_json(flat_path, flat)
        # verify: flat and nested parse to identical layers
        cfg_flat = Gemma4TextConfig.from_dict(copy.deepcopy(flat))
        cfg_nest = Gemma4TextConfig.from_dict(copy.deepcopy(text_json))
        m_flat = Gemma4ForCausalLM(cfg_flat)
        m_nest = Gemma4ForCausalLM(cfg_nest)
        s1 = {k: tuple(v.shape) for k, v in m_flat.state_dict().items()}
        s2 = {k: tuple(v.shape) for k, v in m_nest.state_dict().items()}
        same = s1 == s2
        for t in set(spec["layer_types"]):
            a = getattr(m_flat.model.rotary_emb, f"{t}_inv_freq")
            b = getattr(m_nest.model.rotary_emb, f"{t}_inv_freq")
            same = same and a.shape == b.shape and torch.equal(a, b)
        for i in range(spec["num_hidden_layers"]):
            a1, a2 = m_flat.model.layers[i].self_attn, m_nest.model.layers[i].self_attn
            same = same and (a1.head_dim, a1.num_key_value_groups, a1.is_kv_shared_layer, a1.store_full_length_kv) == (
                a2.head_dim, a2.num_key_value_groups, a2.is_kv_shared_layer, a2.store_full_length_kv)
        checks["config_flat_parses_identically"] = bool(same)
        if not same:
            warn(f"{name}: config_flat.json does NOT parse to the same layers as text/config.json")
        del m_flat, m_nest
    except Exception as e:  # optional check
        warn(f"{name}: config_flat.json step failed: {e!r}")
        traceback.print_exc()
        checks["config_flat_parses_identically"] = None

    # ---- verify reloads against the in-memory model (fp32 eager)
    probe = make_prompts(np.random.default_rng(seed + 99), (23,))[0]
    ref = forward_logits(model, probe, device).logits[0]
    t32, _ = load_model(Gemma4ForCausalLM, text_dir, torch.float32, device, "eager", what=f"{name}/text")
    check_shapes(t32, spec, "model.", f"{name}/text (reloaded)")
    d1 = check_close(f"{name}/text reload logits", forward_logits(t32, probe, device).logits[0], ref, 1e-3)
    if not torch.equal(t32.model.layers[0].layer_scalar.cpu(), model.model.layers[0].layer_scalar.cpu()):
        raise RuntimeError(f"{name}/text: layer_scalar did not survive the reload")
    del t32
    m32, unexpected = load_model(Gemma4ForConditionalGeneration, mm_dir, torch.float32, device, "eager",
                                 expect_unexpected=extras, what=f"{name}/mm")
    check_shapes(m32, spec, "model.language_model.", f"{name}/mm (reloaded)")
    d2 = check_close(f"{name}/mm reload logits", forward_logits(m32, probe, device).logits[0], ref, 1e-3)
    del m32
    checks["reload_max_abs_diff"] = {"text": d1, "mm": d2}
    if extras:
        checks["mm_extras_reported_unexpected_by_hf"] = sorted(unexpected)
    log(f"  reload check ok (text {d1:.2e}, mm {d2:.2e})")
    with open(os.path.join(mm_dir, "config.json")) as f:
        mmj = json.load(f)
    for k, v in mmj.items():
        if (k.endswith("_token_id") or k.endswith("_token_index")) and isinstance(v, int) and v >= VOCAB:
            warn(f"{name}/mm config.json: {k}={v} is outside the vocab")
    return model, spec, checks


def reference_runs(name, spec, seed, out_dir, device, checks):
    vdir = os.path.join(out_dir, name)
    text_dir = os.path.join(vdir, "text")
    rng = np.random.default_rng(seed + 1)
    prompts = make_prompts(rng, TARGET_PROMPT_LENS)

    m32, _ = load_model(Gemma4ForCausalLM, text_dir, torch.float32, device, "eager", what=f"{name}/text fp32")
    m16, _ = load_model(Gemma4ForCausalLM, text_dir, torch.bfloat16, device, None, what=f"{name}/text bf16")
    checks["attn_implementation"] = {
        "fp32": getattr(m32.config, "_attn_implementation", None),
        "bf16": getattr(m16.config, "_attn_implementation", None),
    }
    if spec.get("enable_moe_block"):
        checks["experts_implementation"] = {
            "fp32": getattr(m32.config, "_experts_implementation", None),
            "bf16": getattr(m16.config, "_experts_implementation", None),
        }
    H = spec["hidden_size"]
    margins_all = []
    agree = []
    pj = []
    post_norm_ok = True
    for pi, ids in enumerate(prompts):
        T = len(ids)
        o32 = forward_logits(m32, ids, device, output_hidden_states=True)
        lg32 = o32.logits[0].float()
        hid = o32.hidden_states[-1][0].float()
        if tuple(lg32.shape) != (T, VOCAB) or tuple(hid.shape) != (T, H):
            raise RuntimeError(f"{name} p{pi}: bad shapes logits {tuple(lg32.shape)} hidden {tuple(hid.shape)}")
        # hidden_states[-1] should be the post-final-norm state the lm_head consumes
        try:
            z = hid @ m32.get_output_embeddings().weight.float().T
            cap = spec.get("final_logit_softcapping")
            if cap:
                z = torch.tanh(z / cap) * cap
            dd = (z - lg32).abs().max().item()
            if dd > 1e-3:
                post_norm_ok = False
                warn(f"{name} p{pi}: lm_head(hidden_states[-1]) differs from logits by {dd:.3e}")
        except Exception as e:
            warn(f"{name}: post-norm hidden check failed: {e!r}")
        o16 = forward_logits(m16, ids, device)
        lg16 = o16.logits[0].float()
        if tuple(lg16.shape) != (T, VOCAB):
            raise RuntimeError(f"{name} p{pi}: bad bf16 logits shape {tuple(lg16.shape)}")
        margins_all.append(top2_margin(lg32))
        same = (lg32.argmax(-1) == lg16.argmax(-1)).cpu().numpy()
        agree.append(same)

        entry = {"ids": ids}
        f32 = {"logits": f"p{pi}.fp32.logits.f32", "hidden": f"p{pi}.fp32.hidden.f32"}
        b16 = {"logits": f"p{pi}.bf16.logits.f32"}
        write_f32(os.path.join(vdir, f32["logits"]), lg32)
        write_f32(os.path.join(vdir, f32["hidden"]), hid)
        write_f32(os.path.join(vdir, b16["logits"]), lg16)
        if pi in GREEDY_PROMPTS:
            for tag, m, d in (("fp32", m32, f32), ("bf16", m16, b16)):
                try:
                    seq, mg = greedy(m, ids, device)
                    d["greedy"] = seq
                    d["greedy_margin"] = mg
                    first = int((lg32 if tag == "fp32" else lg16)[-1].argmax())
                    if seq and seq[0] != first:
                        warn(f"{name} p{pi} {tag}: greedy first token {seq[0]} != argmax of full forward {first}")
                except Exception as e:
                    warn(f"{name} p{pi} {tag}: greedy generation failed: {e!r}")
                    traceback.print_exc()
        entry["fp32"] = f32
        entry["bf16"] = b16
        pj.append(entry)
    m = np.concatenate(margins_all)
    ag = np.concatenate(agree)
    med, p10 = float(np.median(m)), float(np.percentile(m, 10))
    frac = float((m > 0.3).mean())
    ag_all = float(ag.mean())
    ag_peaked = float(ag[m > 0.3].mean()) if (m > 0.3).any() else float("nan")
    log(f"  {name}: fp32 top-2 margin median {med:.3f}, p10 {p10:.3f}, >0.3 at {100 * frac:.1f}% of positions; "
        f"fp32/bf16 argmax agreement {100 * ag_all:.1f}% (where margin>0.3: {100 * ag_peaked:.1f}%)")
    checks["hidden_is_post_final_norm"] = post_norm_ok
    checks["fp32_top2_margin"] = {"median": med, "p10": p10, "frac_gt_0.3": frac}
    checks["fp32_bf16_argmax_agreement"] = ag_all
    checks["fp32_bf16_argmax_agreement_where_margin_gt_0.3"] = ag_peaked
    for pi, e in enumerate(pj):
        if pi in GREEDY_PROMPTS and "greedy" in e["fp32"] and "greedy" in e["bf16"]:
            if e["fp32"]["greedy"] != e["bf16"]["greedy"]:
                log(f"  note: {name} p{pi} fp32 and bf16 greedy sequences differ")

    geo = layer_geometry(spec)
    golden = {
        "variant": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "vocab_size": VOCAB,
        "hidden_size": H,
        "eos_token_id": EOS,
        "bos_token_id": BOS,
        "pad_token_id": PAD,
        "greedy_max_new_tokens": GREEDY_NEW_TOKENS,
        "description": VARIANT_NOTES[name],
        "layers": geo,
        "kv_source_layers": kv_source_layers(spec),
        "rope_parameters": spec["rope_parameters"],
        "rope_inv_freq": {t: getattr(m32.model.rotary_emb, f"{t}_inv_freq").float().cpu().tolist()
                          for t in sorted(set(spec["layer_types"]))},
        "prompts": pj,
        "checks": checks,
    }
    write_json(os.path.join(vdir, "golden.json"), golden)
    del m16
    return m32, prompts


# --------------------------------------------------------------------------------------------
# assistants
# --------------------------------------------------------------------------------------------
def assistant_text_kwargs(tspec):
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        layer_types=[S, S, S, F],
        num_attention_heads=2,
        num_key_value_heads=tspec["num_key_value_heads"],
        head_dim=tspec["head_dim"],
        global_head_dim=tspec["global_head_dim"],
        num_global_key_value_heads=tspec["num_global_key_value_heads"],
        attention_k_eq_v=tspec["attention_k_eq_v"],
        sliding_window=tspec["sliding_window"],
        rope_parameters=copy.deepcopy(tspec["rope_parameters"]),
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
        num_kv_shared_layers=4,
        enable_moe_block=False,
        use_double_wide_mlp=False,
        final_logit_softcapping=None,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
        tie_word_embeddings=True,
    )


def make_assistant_config(tspec, kind):
    text_cfg = Gemma4TextConfig(**assistant_text_kwargs(tspec))
    return Gemma4AssistantConfig(
        text_config=text_cfg,
        backbone_hidden_size=tspec["hidden_size"],
        use_ordered_embeddings=(kind == "centroid"),
        num_centroids=8,
        centroid_intermediate_top_k=2,
        tie_word_embeddings=True,
    )


def _rms(x, w=None, eps=1e-6):
    y = x * torch.pow(x.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    return y * w if w is not None else y


def _rope(x, pos, inv_freq):
    f = pos * inv_freq.float()
    emb = torch.cat([f, f])
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * emb.cos() + rot * emb.sin()


@torch.no_grad()
def manual_assistant_step(asst, aspec_text, inp, pos, kv, rope_params):
    """By-hand fp32 recomputation of one assistant step (the math of gemma4-architecture.md §4.3)."""
    P = {k: v.float() for k, v in asst.state_dict().items() if v.is_floating_point()}
    x = inp.reshape(-1).float() @ P["pre_projection.weight"].T
    nh = aspec_text["num_attention_heads"]
    for i, t in enumerate(aspec_text["layer_types"]):
        p = f"model.layers.{i}."
        D = aspec_text["global_head_dim"] if t == F else aspec_text["head_dim"]
        r = x
        a = _rms(x, P[p + "input_layernorm.weight"])
        q = (a @ P[p + "self_attn.q_proj.weight"].T).view(nh, D)
        q = _rms(q, P[p + "self_attn.q_norm.weight"])
        q = _rope(q, float(pos), expected_inv_freq(rope_params[t], D).to(q.device))
        K, V = kv[t][0][0].float(), kv[t][1][0].float()  # [kvh, T, D]
        g = nh // K.shape[0]
        o = []
        for h in range(nh):
            s = K[h // g] @ q[h]
            pr = torch.softmax(s, -1)
            o.append(pr @ V[h // g])
        o = torch.cat(o) @ P[p + "self_attn.o_proj.weight"].T
        x = r + _rms(o, P[p + "post_attention_layernorm.weight"])
        r = x
        a = _rms(x, P[p + "pre_feedforward_layernorm.weight"])
        gt = torch.nn.functional.gelu(a @ P[p + "mlp.gate_proj.weight"].T, approximate="tanh")
        m = (gt * (a @ P[p + "mlp.up_proj.weight"].T)) @ P[p + "mlp.down_proj.weight"].T
        x = r + _rms(m, P[p + "post_feedforward_layernorm.weight"])
        x = x * P[p + "layer_scalar"]
    y = _rms(x, P["model.norm.weight"])
    hidden = y @ P["post_projection.weight"].T
    E = P["model.embed_tokens.weight"]
    if "masked_embedding.centroids.weight" in P:
        c = y @ P["masked_embedding.centroids.weight"].T
        top = torch.topk(c, asst.config.centroid_intermediate_top_k).indices
        order = asst.masked_embedding.token_ordering.long().view(asst.config.num_centroids, -1)
        cand = order[top].reshape(-1)
        sel = E[cand] @ y
        logits = torch.full((E.shape[0],), sel.min().item() - 1.0, device=y.device)
        logits[cand] = sel
    else:
        logits = E @ y
    return logits, hidden


def build_and_run_assistant(target_name, tspec, kind, seed, out_dir, device, target_m32):
    adir = os.path.join(out_dir, f"assistant_{target_name}_{kind}")
    if os.path.isdir(adir):
        shutil.rmtree(adir)
    os.makedirs(adir)
    mdir = os.path.join(adir, "model")
    checks = {}
    cfg = make_assistant_config(tspec, kind)
    asst = build_model(Gemma4AssistantForCausalLM, cfg)
    gen = torch.Generator().manual_seed(seed)
    init_weights_(asst, gen, 32, {"model.norm.weight"})
    perm = None
    if kind == "centroid":
        perm = asst.masked_embedding.token_ordering.detach().clone().cpu()
        if perm.dtype != torch.int64 or not torch.equal(torch.sort(perm).values, torch.arange(VOCAB)):
            raise RuntimeError(f"token_ordering is not an int64 permutation of 0..{VOCAB - 1} ({perm.dtype})")
    # shapes of the assistant (all layers KV-shared: q/o only)
    sd = asst.state_dict()
    aspec_text = assistant_text_kwargs(tspec)
    for i, t in enumerate(aspec_text["layer_types"]):
        D = aspec_text["global_head_dim"] if t == F else aspec_text["head_dim"]
        shp = tuple(sd[f"model.layers.{i}.self_attn.q_proj.weight"].shape)
        if shp != (2 * D, 32):
            raise RuntimeError(f"assistant layer {i} q_proj shape {shp} != {(2 * D, 32)}")
        if f"model.layers.{i}.self_attn.k_proj.weight" in sd:
            raise RuntimeError(f"assistant layer {i} unexpectedly has k_proj")
    if tuple(sd["pre_projection.weight"].shape) != (32, 2 * tspec["hidden_size"]):
        raise RuntimeError(f"pre_projection shape {tuple(sd['pre_projection.weight'].shape)}")
    asst = asst.to(device)
    save_with_dtype(asst, mdir, torch.bfloat16)
    log(f"  saved {mdir}")
    if perm is not None:
        stored = None
        for fn in sorted(os.listdir(mdir)):
            if fn.endswith(".safetensors"):
                with safetensors.safe_open(os.path.join(mdir, fn), framework="pt") as f:
                    if "masked_embedding.token_ordering" in f.keys():
                        stored = f.get_tensor("masked_embedding.token_ordering")
        if stored is None or stored.dtype != torch.int64 or not torch.equal(stored, perm):
            raise RuntimeError(f"token_ordering not stored as the int64 permutation (got {None if stored is None else stored.dtype})")
    a32, _ = load_model(Gemma4AssistantForCausalLM, mdir, torch.float32, device, "eager",
                        what=f"assistant_{target_name}_{kind}")
    if perm is not None:
        got = a32.masked_embedding.token_ordering.detach().cpu()
        ok = torch.equal(got.long(), perm)
        checks["token_ordering_survives_from_pretrained"] = bool(ok)
        if not ok:
            warn(f"assistant_{target_name}_{kind}: from_pretrained did NOT restore token_ordering "
                 f"(first entries {got[:8].tolist()}); restoring it by hand for the reference run")
            a32.masked_embedding.token_ordering.copy_(perm.to(a32.masked_embedding.token_ordering.device))
    ls = [float(a32.model.layers[i].layer_scalar.item()) for i in range(4)]
    if all(abs(v - 1.0) < 1e-6 for v in ls):
        raise RuntimeError("assistant layer_scalar came back as 1.0 after reload")

    emb = target_m32.get_input_embeddings()
    W = tspec["sliding_window"]
    Hb = tspec["hidden_size"]
    rng = np.random.default_rng(seed + 5)
    prompts = make_prompts(rng, ASSIST_PROMPT_LENS)
    pj = []
    manual = []
    in_mem_diff = 0.0
    captured = {}
    hook = None
    if kind == "centroid":
        hook = a32.masked_embedding.register_forward_hook(lambda mod, args, out: captured.__setitem__("y", args[0]))
    for pi, ids in enumerate(prompts):
        L = len(ids)
        x = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.no_grad():
            to = target_m32(input_ids=x, use_cache=False, output_hidden_states=True, return_shared_kv_states=True)
        skv = to.shared_kv_states
        if skv is None:
            raise RuntimeError("target did not return shared_kv_states")
        geo = layer_geometry(tspec)
        kv = {}
        for t in (S, F):
            if t not in skv:
                raise RuntimeError(f"shared_kv_states has no {t} entry (keys {list(skv.keys())})")
            K, V = skv[t]
            D = tspec["global_head_dim"] if t == F else tspec["head_dim"]
            kvh = tspec["num_global_key_value_heads"] if (t == F and tspec["attention_k_eq_v"]) else tspec["num_key_value_heads"]
            if tuple(K.shape) != (1, kvh, L, D) or tuple(V.shape) != (1, kvh, L, D):
                raise RuntimeError(f"shared_kv_states[{t}] shapes K {tuple(K.shape)} V {tuple(V.shape)}; "
                                   f"expected {(1, kvh, L, D)}")
            lo = 0 if t == F else max(0, L - W)
            kv[t] = (K[:, :, lo:L].contiguous(), V[:, :, lo:L].contiguous())
        bonus = int(to.logits[0, L - 1].argmax())
        h = to.hidden_states[-1][0, L - 1].float()
        seed_file = f"p{pi}.seed_hidden.f32"
        write_f32(os.path.join(adir, seed_file), h)
        tok = bonus
        steps = []
        for s in range(ASSIST_STEPS):
            with torch.no_grad():
                e = emb(torch.tensor([[tok]], dtype=torch.long, device=device)).float()
                inp = torch.cat([e, h.view(1, 1, Hb)], dim=-1)
                pos = torch.tensor([[L]], dtype=torch.long, device=device)
                out = a32(inputs_embeds=inp, position_ids=pos, shared_kv_states=kv, attention_mask=None, use_cache=False)
            lg = out.logits[0, 0].float()
            hn = out.last_hidden_state[0, 0].float()
            if tuple(lg.shape) != (VOCAB,) or tuple(hn.shape) != (Hb,):
                raise RuntimeError(f"assistant output shapes logits {tuple(lg.shape)} hidden {tuple(hn.shape)}")
            am = int(lg.argmax())
            st = {"token_in": tok, "logits": f"p{pi}.s{s}.logits.f32", "hidden_out": f"p{pi}.s{s}.hidden.f32", "argmax": am}
            v2 = torch.topk(lg, 2).values
            st["top2_margin"] = float(v2[0] - v2[1])
            write_f32(os.path.join(adir, st["logits"]), lg)
            write_f32(os.path.join(adir, st["hidden_out"]), hn)
            if kind == "centroid":
                y = captured["y"][0, 0].float()
                c = y @ a32.masked_embedding.centroids.weight.float().T
                top = torch.topk(c, a32.config.centroid_intermediate_top_k).indices
                order = a32.masked_embedding.token_ordering.long().view(a32.config.num_centroids, -1)
                cand = order[top].reshape(-1).cpu().tolist()
                by_value = set((lg > lg.min()).nonzero().flatten().cpu().tolist())
                if by_value != set(cand):
                    warn(f"assistant_{target_name}_{kind} p{pi} s{s}: candidate set from centroids differs from "
                         f"the non-fill logits ({len(cand)} vs {len(by_value)})")
                st["candidates"] = cand
                st["top_clusters"] = top.cpu().tolist()
            # optional by-hand check of step 1
            if s == 0:
                try:
                    ml, mh = manual_assistant_step(a32, aspec_text, inp, L, kv, tspec["rope_parameters"])
                    dl = (ml - lg).abs().max().item()
                    dh = (mh - hn).abs().max().item()
                    manual.append({"prompt": pi, "max_abs_diff_logits": dl, "max_abs_diff_hidden": dh})
                    if dl > 2e-3 or dh > 2e-3:
                        warn(f"assistant_{target_name}_{kind} p{pi}: by-hand step-1 recomputation differs "
                             f"(logits {dl:.3e}, hidden {dh:.3e})")
                except Exception as ex:
                    warn(f"assistant_{target_name}_{kind}: by-hand check failed: {ex!r}")
                    traceback.print_exc()
                # in-memory vs reloaded assistant
                with torch.no_grad():
                    out_mem = asst(inputs_embeds=inp, position_ids=pos, shared_kv_states=kv, attention_mask=None,
                                   use_cache=False)
                in_mem_diff = max(in_mem_diff, (out_mem.logits[0, 0].float() - lg).abs().max().item())
            steps.append(st)
            tok = am
            h = hn
        pj.append({"ids": ids, "bonus": bonus, "query_position": L, "seed_hidden": seed_file,
                   "kv_range": {"full_attention": [0, L], "sliding_attention": [max(0, L - W), L]},
                   "steps": steps})
    if hook is not None:
        hook.remove()
    if in_mem_diff > 1e-3:
        raise RuntimeError(f"assistant_{target_name}_{kind}: reloaded model differs from in-memory ({in_mem_diff:.3e})")
    checks["reload_max_abs_diff_step1_logits"] = in_mem_diff
    checks["manual_step1_recomputation"] = manual
    margins = [st["top2_margin"] for p in pj for st in p["steps"]]
    log(f"  assistant_{target_name}_{kind}: step top-2 margins median {np.median(margins):.3f}, min {min(margins):.3f}; "
        f"by-hand max diff {max([m['max_abs_diff_logits'] for m in manual] or [float('nan')]):.2e}")
    golden = {
        "target": f"../{target_name}/text",
        "assistant": "model",
        "kind": kind,
        "transformers": transformers.__version__,
        "sliding_window": W,
        "backbone_hidden_size": Hb,
        "assistant_hidden_size": 32,
        "vocab_size": VOCAB,
        "num_steps": ASSIST_STEPS,
        "target_embed_scale": float(emb.embed_scale.to(emb.weight.dtype).item()) if hasattr(emb, "embed_scale") else None,
        "target_kv_source_layers": kv_source_layers(tspec),
        "protocol": "target fp32 eager forward over ids (use_cache=False, output_hidden_states, return_shared_kv_states); "
        "bonus=argmax(logits[L-1]); seed h=hidden_states[-1][0,L-1]; KV full [0,L), sliding [max(0,L-W),L); "
        "step: assistant(inputs_embeds=cat(target_embed(tok), h), position_ids=[[L]], shared_kv_states=KV, "
        "attention_mask=None); tok<-argmax(logits), h<-last_hidden_state (post_projection output)",
        "prompts": pj,
        "checks": checks,
    }
    if kind == "centroid":
        golden["num_centroids"] = 8
        golden["centroid_intermediate_top_k"] = 2
        golden["logits_fill"] = "non-candidates hold min(candidate logits) - 1 (HF MaskedEmbedder)"
    write_json(os.path.join(adir, "golden.json"), golden)
    del a32, asst


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------
def write_readme(out_dir, args, sizes):
    lines = [
        "# Gemma 4 golden reference data (HF transformers)",
        "",
        f"Generated by `python3 scripts/make_golden.py --out {args.out} --device {args.device} --seed {args.seed}`",
        f"with transformers {transformers.__version__}, torch {torch.__version__}, on {args.device}.",
        "Deterministic given the seed (same hardware / library versions).",
        "",
        "All models are tiny random Gemma 4 models: vocab 512 (pad 0, eos 1, bos 2), every weight bf16-exact,",
        "non-unit `layer_scalar` (U[0.5,1.5]) and norm weights (U[0.7,1.3]; q_norm/k_norm x0.4 so attention is",
        "not chaotic; final norm x6 for peaked logits), embeddings std 1/sqrt(H), linears std 1/sqrt(fan_in),",
        "MoE router std 4, per_expert_scale and router.scale U[0.5,1.5]. `golden.json` `checks` records the fp32",
        "top-2 margin statistics and the fp32-vs-bf16 argmax agreement.",
        "Prompt ids are in [3, 500) and start with bos=2; the multimodal placeholder ids of the `mm/` configs",
        "(boi 500, eoi 501, image 502, video 503, boa 504, eoa 505, audio 506) never occur in prompts.",
        "",
        "## Target variants",
        "",
    ]
    for n, spec in VARIANTS.items():
        lines.append(f"* `{n}` — {VARIANT_NOTES[n]}. layer_types "
                     f"{''.join('F' if t == F else 'S' for t in spec['layer_types'])}, H={spec['hidden_size']}, "
                     f"heads {spec['num_attention_heads']}/{spec['num_key_value_heads']} (q/kv sliding), "
                     f"head_dim {spec['head_dim']}/{spec['global_head_dim']}, window {spec['sliding_window']}, "
                     f"PLE {spec['hidden_size_per_layer_input']}, kv_shared {spec['num_kv_shared_layers']}, "
                     f"k_eq_v {spec['attention_k_eq_v']}, softcap {spec['final_logit_softcapping']}.")
    lines += [
        "",
        "Per variant `<variant>/`:",
        "",
        "* `text/` — `Gemma4ForCausalLM.save_pretrained` (config `model_type: gemma4_text`, nested `per_layer_config`",
        "  form as transformers writes it; weights prefixed `model.`; lm_head tied, not stored). bf16, except",
        "  `irregular/text` which is float32.",
        "* `mm/` — `Gemma4ForConditionalGeneration.save_pretrained` with `vision_config=None, audio_config=None`",
        "  (weights under `model.language_model.`). `irregular/mm` is float32 and sharded",
        "  (`model.safetensors.index.json` + >=3 shards). `e_style/mm/model.safetensors` additionally contains the",
        "  unused `self_attn.{k_proj,v_proj,k_norm}.weight` of the KV-shared layers (random values, like Google's",
        "  released checkpoints) — an engine must ignore them.",
        "* `config_flat.json` — the same text config in the older flat form (`global_head_dim`,",
        "  `num_global_key_value_heads`, no `per_layer_config`); must parse to identical layers.",
        "* `golden.json` + `*.f32` — reference outputs (below).",
        "",
        "### `<variant>/golden.json`",
        "",
        "```",
        '{"variant", "transformers", "vocab_size": 512, "hidden_size": H, "eos_token_id": 1,',
        ' "prompts": [{"ids": [...],',
        '              "fp32": {"logits": "p0.fp32.logits.f32", "hidden": "p0.fp32.hidden.f32",',
        '                       "greedy": [...], "greedy_margin": [...]},',
        '              "bf16": {"logits": "p0.bf16.logits.f32", "greedy": [...], "greedy_margin": [...]}}, ...],',
        ' "layers": [...], "kv_source_layers": {...}, "rope_parameters": {...}, "rope_inv_freq": {...},',
        ' "checks": {...}}',
        "```",
        "",
        "* 3 prompts of lengths 5, 37, 70.",
        "* `fp32`: `from_pretrained(text/, dtype=float32, attn_implementation=\"eager\")`, one forward over the whole",
        "  prompt: `logits` `[T, 512]` (after the final softcap) and `hidden` = `hidden_states[-1]` `[T, H]`",
        "  (post final norm, i.e. what the lm_head consumes).",
        "* `bf16`: `from_pretrained(text/, dtype=bfloat16)` (default sdpa), logits stored as float32.",
        f"* `greedy` (prompts 0 and 1 only): `generate(do_sample=False, max_new_tokens={GREEDY_NEW_TOKENS}, use_cache=True,",
        "  attention_mask=ones, pad_token_id=0)` — the new ids only (stops early if eos=1 is generated);",
        "  `greedy_margin[i]` = top1 - top2 of HF's raw logits (`output_logits`) at generated step i.",
        "* `checks`: what the generator verified (reload diffs, margins, fp32/bf16 argmax agreement, ...).",
        "",
        "## Assistant (MTP drafter) goldens: `assistant_<target>_<dense|centroid>/`",
        "",
        "* `model/` — `Gemma4AssistantForCausalLM.save_pretrained` (bf16): hidden 32, 4 layers SSSF, 2 query heads,",
        "  all layers KV-shared, intermediate 64, `backbone_hidden_size` = target H, head dims / KV heads / RoPE /",
        "  window / k_eq_v identical to the target, no softcap. `dense`: tied head over the assistant's own",
        "  `model.embed_tokens`. `centroid`: `use_ordered_embeddings`, 8 centroids (64 tokens each), top-2;",
        "  `masked_embedding.token_ordering` is an int64 permutation of 0..511.",
        "* `golden.json`:",
        "",
        "```",
        '{"target": "../<target>/text", "assistant": "model", "sliding_window": W,',
        ' "prompts": [{"ids": [...], "bonus": b, "query_position": L, "seed_hidden": "p0.seed_hidden.f32",',
        '              "kv_range": {"full_attention": [0, L], "sliding_attention": [max(0,L-W), L]},',
        '              "steps": [{"token_in": t, "logits": "p0.s0.logits.f32", "hidden_out": "p0.s0.hidden.f32",',
        '                         "argmax": a, "top2_margin": m, "candidates": [...] (centroid only)}, ...]}, ...]}',
        "```",
        "",
        "Protocol (fp32, eager): run the target over the prompt (length L) with `output_hidden_states=True,",
        "return_shared_kv_states=True`; bonus `b = argmax(logits[L-1])`; seed `h = hidden_states[-1][0, L-1]` (post",
        "final norm, stored as `seed_hidden`); KV passed to the assistant: full `(K,V)[:, :, 0:L]`, sliding",
        "`(K,V)[:, :, max(0,L-W):L]` (layout `[B, kv_heads, T, D]`, K post-norm post-RoPE, V post-norm; all passed",
        "keys are visible). 3 chained steps: `assistant(inputs_embeds=cat(target_embed(tok), h)[None,None],",
        "position_ids=[[L]], shared_kv_states=KV, attention_mask=None)` with `target_embed` the target's scaled input",
        "embedding; step 1 `tok=b`, `h=seed`; later steps `tok` = previous argmax, `h` = previous `last_hidden_state`",
        "(the post_projection output, `[Hb]`). Per step: `logits` `[512]` (centroid head: non-candidates hold",
        "`min(candidate logits) - 1`, as HF fills them; `candidates` lists the 128 candidate ids, cluster by cluster",
        "in top-k order), `hidden_out` `[Hb]`. Prompt lengths 5, 30, 45 (the last two exceed the window 16).",
        "",
        "## File format",
        "",
        "`*.f32` files are raw little-endian float32, row-major, no header; shapes as stated above",
        "(`[T, 512]` logits, `[T, H]` hidden, `[512]` / `[Hb]` for assistant steps). Paths in golden.json are",
        "relative to the golden.json folder.",
        "",
        "## Sizes",
        "",
    ]
    for k, v in sizes:
        lines.append(f"* `{k}`: {v / 1024:.1f} KiB")
    if WARNINGS:
        lines += ["", "## Warnings raised while generating", ""] + [f"* {w}" for w in WARNINGS]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/golden")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--only", default="", help="comma-separated subset of variants (debugging)")
    args = ap.parse_args()

    t0 = time.time()
    torch.set_grad_enabled(False)
    if args.device == "cuda" and not torch.cuda.is_available():
        warn("CUDA not available; falling back to CPU")
        args.device = "cpu"
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(args.seed)
    log(f"transformers {transformers.__version__}, torch {torch.__version__}, device {device}, seed {args.seed}")
    if not transformers.__version__.startswith("5.17"):
        warn(f"expected transformers 5.17.x, running {transformers.__version__}")
    os.makedirs(args.out, exist_ok=True)
    only = set(x for x in args.only.split(",") if x)

    targets = {}
    for vi, (name, spec) in enumerate(VARIANTS.items()):
        if only and name not in only:
            continue
        log(f"variant {name}: {VARIANT_NOTES[name]}")
        seed = args.seed + 1000 * (vi + 1)
        with torch.no_grad():
            model, spec_used, checks = build_target(name, spec, seed, args.out, device)
            del model
            m32, _ = reference_runs(name, spec_used, seed, args.out, device, checks)
        targets[name] = (m32, spec_used)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for ti, tname in enumerate(ASSISTANT_TARGETS):
        if tname not in targets:
            continue
        m32, tspec = targets[tname]
        for ki, kind in enumerate(ASSISTANT_KINDS):
            log(f"assistant for {tname} ({kind})")
            seed = args.seed + 50000 + 100 * ti + 10 * ki
            build_and_run_assistant(tname, tspec, kind, seed, args.out, device, m32)

    # table of what was written
    sizes = []
    for entry in sorted(os.listdir(args.out)):
        p = os.path.join(args.out, entry)
        if os.path.isdir(p):
            for sub in sorted(os.listdir(p)):
                q = os.path.join(p, sub)
                if os.path.isdir(q):
                    sizes.append((f"{entry}/{sub}/", dir_size(q)))
            loose = sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p) if os.path.isfile(os.path.join(p, f)))
            sizes.append((f"{entry}/ (golden.json, *.f32, config_flat.json)", loose))
    write_readme(args.out, args, sizes)
    total = dir_size(args.out)
    print("\n%-60s %10s" % ("path", "KiB"))
    for k, v in sizes:
        print("%-60s %10.1f" % (k, v / 1024))
    print("%-60s %10.1f" % ("TOTAL", total / 1024))
    if WARNINGS:
        print(f"\n{len(WARNINGS)} warning(s):")
        for w in WARNINGS:
            print("  - " + w)
    log(f"done in {time.time() - t0:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
