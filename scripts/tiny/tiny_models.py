"""Model configs and shared torch helpers for the tiny Gemma 4 target and its MTP assistant."""
from __future__ import annotations

import copy
import json
import os

import common as C

ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
}
TARGET_LAYER_TYPES = ["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3 + ["full_attention"]
ASSISTANT_LAYER_TYPES = ["sliding_attention"] * 3 + ["full_attention"]

# training-tiny-models.md §4.1, text_config (release form)
TARGET_TEXT_CONFIG = {
    "model_type": "gemma4_text", "vocab_size": 8192, "vocab_size_per_layer_input": 8192,
    "hidden_size": 256, "intermediate_size": 768, "use_double_wide_mlp": True,
    "num_hidden_layers": 8, "layer_types": TARGET_LAYER_TYPES,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 256,
    "global_head_dim": 512, "attention_k_eq_v": True, "num_global_key_value_heads": 1,
    "num_kv_shared_layers": 3, "hidden_size_per_layer_input": 16, "sliding_window": 128,
    "rope_parameters": ROPE,
    "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-06,
    "max_position_embeddings": 8192, "attention_bias": False, "attention_dropout": 0.0,
    "enable_moe_block": False, "use_bidirectional_attention": None, "tie_word_embeddings": True,
    "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "initializer_range": 0.02,
}

# §4.1 top level
TARGET_TOP = {
    "architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "dtype": "bfloat16",
    "tie_word_embeddings": True, "vision_config": None, "audio_config": None, "eos_token_id": [1, 106],
    "boi_token_id": 8185, "boa_token_id": 8186, "image_token_id": 8187, "audio_token_id": 8188,
    "eoi_token_id": 8189, "eoa_token_index": 8190, "video_token_id": 8191,
}

# §6.1 text_config of the assistant
ASSISTANT_TEXT_CONFIG = {
    "model_type": "gemma4_text", "vocab_size": 8192, "hidden_size": 128, "intermediate_size": 512,
    "num_hidden_layers": 4, "layer_types": ASSISTANT_LAYER_TYPES,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 256, "global_head_dim": 512,
    "attention_k_eq_v": True, "num_global_key_value_heads": 1, "num_kv_shared_layers": 4,
    "sliding_window": 128, "rope_parameters": ROPE,
    "hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0, "use_double_wide_mlp": False,
    "enable_moe_block": False, "final_logit_softcapping": None, "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-06, "max_position_embeddings": 8192, "tie_word_embeddings": True,
    "attention_bias": False, "attention_dropout": 0.0, "use_bidirectional_attention": None,
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1, "initializer_range": 0.02,
}

ASSISTANT_TOP = {
    "architectures": ["Gemma4AssistantForCausalLM"], "model_type": "gemma4_assistant", "dtype": "bfloat16",
    "backbone_hidden_size": 256, "use_ordered_embeddings": False, "num_centroids": 64,
    "centroid_intermediate_top_k": 8, "tie_word_embeddings": True,
}

TARGET_GEN_CONFIG = {"bos_token_id": 2, "eos_token_id": [1, 106, 50], "pad_token_id": 0,
                     "do_sample": True, "temperature": 1.0, "top_k": 64, "top_p": 0.95}
ASSISTANT_GEN_CONFIG = {"bos_token_id": 2, "eos_token_id": [1, 106, 50], "pad_token_id": 0,
                        "num_assistant_tokens": 4, "num_assistant_tokens_schedule": "constant"}

MTP_CONVENTION = {
    "query_position": "committed_len", "mtp_query_pos_offset": 1,
    "full_keys": "[0, committed_len-1]",
    "sliding_keys": "[committed_len-128, committed_len-1]", "sliding_window": 128,
    "seed_hidden": "post-norm target hidden at committed_len-1",
    "seed_token": "bonus token at committed_len", "trained_steps": 4,
    "kv_owner_layers": {"sliding_attention": 4, "full_attention": 3},
    "input_concat_order": ["target_scaled_embedding(tok)", "hidden"],
    "assistant_logit_softcap": None,
}

TARGET_LAYER_SCALARS = [1, 0.5, 1, 0.5, 1, 0.5, 1, 0.5]
ASSISTANT_LAYER_SCALARS = [0.5, 1, 0.5, 1]


def text_config(d=None, attn="sdpa"):
    from transformers import Gemma4TextConfig
    d = copy.deepcopy(d or TARGET_TEXT_CONFIG)
    d.pop("model_type", None)
    cfg = Gemma4TextConfig(**d)
    cfg._attn_implementation = attn
    return cfg


def assistant_config(use_ordered, attn="sdpa"):
    from transformers import Gemma4AssistantConfig
    top = dict(ASSISTANT_TOP)
    top.pop("architectures"); top.pop("model_type"); top.pop("dtype")
    top["use_ordered_embeddings"] = bool(use_ordered)
    cfg = Gemma4AssistantConfig(text_config=copy.deepcopy(ASSISTANT_TEXT_CONFIG), **top)
    cfg._attn_implementation = attn
    try:
        cfg.text_config._attn_implementation = attn
    except Exception:  # noqa: BLE001
        pass
    return cfg


def softcap(z, cap=30.0):
    import torch
    return cap * torch.tanh(z / cap)


def layer_geometry(text_model):
    """Per-layer attention geometry read from the modules (robust to config serialisation)."""
    out = []
    for l in text_model.layers:
        at = l.self_attn
        kvh = at.k_proj.weight.shape[0] // at.head_dim if getattr(at, "k_proj", None) is not None else None
        out.append({"type": at.layer_type, "head_dim": at.head_dim, "q_heads": at.q_proj.weight.shape[0] // at.head_dim,
                    "kv_heads": kvh, "kv_shared": bool(at.is_kv_shared_layer),
                    "v_proj": getattr(at, "v_proj", None) is not None,
                    "mlp": l.mlp.gate_proj.weight.shape[0]})
    return out


def reparam_layer_scalars(text_model, scalars, has_ple):
    """Exact identity: rescale post-norm weights so that a non-unit layer_scalar reproduces the same function
    (training-tiny-models.md §5.8 step 1). Operates in place on a text model whose layer_scalars are all 1."""
    import torch
    c = 1.0
    with torch.no_grad():
        for l, s in zip(text_model.layers, scalars):
            assert float(l.layer_scalar.float().item()) == 1.0, "reparameterise only unit layer_scalars"
            l.post_attention_layernorm.weight.mul_(c)
            l.post_feedforward_layernorm.weight.mul_(c)
            if has_ple:
                l.post_per_layer_input_norm.weight.mul_(c)
                l.per_layer_input_gate.weight.div_(c)
            l.layer_scalar.fill_(float(s))
            c = c * float(s)
    return c


def normalize_text_config(native_text: dict, release_text: dict):
    """Release-form text_config: our §4.1 / §6.1 dict; records what HF wrote natively for the fixture."""
    out = copy.deepcopy(release_text)
    return out


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def safetensors_header(path):
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def load_stream(data_dir, split):
    import numpy as np
    arr = np.fromfile(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16)
    idx = np.load(os.path.join(data_dir, f"{split}_index.npz"))
    return arr, idx["doc_offsets"], idx["doc_source"]


def heldout_rows(data_dir, seq_len, max_rows=None):
    """Consecutive rows of the held-out stream (documents in file order), plus the dominant source of each row."""
    import numpy as np
    arr, off, src = load_stream(data_dir, "heldout")
    n = len(arr) // seq_len
    if max_rows:
        n = min(n, max_rows)
    rows = arr[: n * seq_len].astype(np.int64).reshape(n, seq_len)
    tok_src = np.repeat(src.astype(np.int64), np.diff(off))[: n * seq_len].reshape(n, seq_len)
    return rows, tok_src


class fp32_exact:
    """Context: strict fp32 (no TF32 in matmuls) and the math SDPA backend (the fused fp32 attention kernels use
    TF32 tensor cores on sm80+, ~1e-3 relative error)."""

    def __enter__(self):
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        self.prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        self.ctx = sdpa_kernel([SDPBackend.MATH])
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        import torch
        self.ctx.__exit__(*exc)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.prev
        return False
