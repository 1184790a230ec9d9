#!/usr/bin/env python3
"""Stage E: export the trained target to the release layout (training-tiny-models.md §5.8).

reparameterise layer_scalar (exact) -> Gemma4ForConditionalGeneration layout -> bf16 -> save -> normalise config.json
to the §4.1 release form (HF-native kept as a fixture) -> generation_config / card -> strict reload + checks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import tiny_models as TM  # noqa: E402


def logits_of(model, rows, cg=False):
    import torch
    with torch.no_grad():
        return model(input_ids=rows, use_cache=False).logits.float()


def reparam_layer_scalars(causal, scalars):
    return TM.reparam_layer_scalars(causal.model, scalars, has_ple=True)


def to_release_layout(causal):
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    tc = TM.text_config(TM.TARGET_TEXT_CONFIG, attn=causal.config._attn_implementation or "sdpa")
    top = {k: v for k, v in TM.TARGET_TOP.items() if k not in ("architectures", "model_type", "dtype",
                                                                 "vision_config", "audio_config", "eos_token_id")}
    gcfg = Gemma4Config(text_config=tc, vision_config=None, audio_config=None, **top)
    gcfg._attn_implementation = causal.config._attn_implementation or "sdpa"
    cg = Gemma4ForConditionalGeneration(gcfg).to(causal.device).float()
    missing = cg.model.language_model.load_state_dict(causal.model.state_dict(), strict=True)
    cg.tie_weights()
    assert cg.lm_head.weight.data_ptr() == cg.model.language_model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    cg.eval()
    return cg, missing


def normalize_config_json(out_dir, fixture_dir):
    """Rewrite config.json into the §4.1 release form; keep HF's native serialisation as a fixture."""
    p = os.path.join(out_dir, "config.json")
    native = C.load_json(p)
    os.makedirs(fixture_dir, exist_ok=True)
    shutil.copy(p, os.path.join(fixture_dir, "tiny-gemma4.config.hf_native.json"))
    rel = dict(TM.TARGET_TOP)
    rel["text_config"] = dict(TM.TARGET_TEXT_CONFIG)
    if native.get("transformers_version"):
        rel["transformers_version"] = native["transformers_version"]
    TM.write_json(p, rel)
    return native, rel


def write_gen_config(out_dir, gen):
    TM.write_json(os.path.join(out_dir, "generation_config.json"), gen)


def copy_tokenizer(tok_dir, out_dir):
    for fn in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        src = os.path.join(tok_dir, fn)
        dst = os.path.join(out_dir, fn)
        if os.path.abspath(src) != os.path.abspath(dst):
            shutil.copy(src, dst)


def reload_and_check(out_dir, rows, ref_loss, scalars):
    import torch
    from transformers import AutoModelForCausalLM
    res = {}
    for dt_name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        ex = TM.fp32_exact().__enter__() if dt_name == "fp32" else None
        m, info = AutoModelForCausalLM.from_pretrained(out_dir, dtype=dt, output_loading_info=True)
        m = m.cuda().eval()
        bad = {k: sorted(map(str, info.get(k, []) or [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        ls = [float(l.layer_scalar.float().item()) for l in m.model.language_model.layers]
        tied = m.lm_head.weight.data_ptr() == m.model.language_model.embed_tokens.weight.data_ptr()
        with torch.no_grad():
            lg = m(input_ids=rows, use_cache=False).logits.float()
        lp = torch.log_softmax(lg[:, :-1], -1)
        loss = float(-lp.gather(-1, rows[:, 1:, None]).mean())
        res[dt_name] = {"class": type(m).__name__, "loading": bad, "loading_info_keys": sorted(info.keys()),
                        "layer_scalars": ls, "tied": tied,
                        "loss_8rows": loss, "argmax": lg.argmax(-1)}
        if ex is not None:
            ex.__exit__(None, None, None)
        del m
    a, b = res["bf16"].pop("argmax"), res["fp32"].pop("argmax")
    res["bf16_fp32_top1_agree"] = float((a == b).float().mean())
    res["bf16_vs_fp32_ppl_rel"] = math.exp(res["bf16"]["loss_8rows"] - res["fp32"]["loss_8rows"]) - 1
    res["fp32_vs_train_ppl_rel"] = math.exp(res["fp32"]["loss_8rows"] - ref_loss) - 1
    ok = True
    for dt_name in ("bf16", "fp32"):
        r = res[dt_name]
        ok &= r["class"] == "Gemma4ForConditionalGeneration" and r["tied"]
        ok &= all(len(v) == 0 for v in r["loading"].values())
        ok &= r["layer_scalars"] == [float(s) for s in scalars]
    ok &= abs(res["fp32_vs_train_ppl_rel"]) < 1e-3 and abs(res["bf16_vs_fp32_ppl_rel"]) < 0.01
    res["pass"] = bool(ok)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=None, help="dir with tokenizer files (default: --out)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--layer-scalars", default="1,0.5,1,0.5,1,0.5,1,0.5")
    ap.add_argument("--fixtures", required=True, help="dir for the HF-native config fixture")
    ap.add_argument("--report")
    a = ap.parse_args()
    import torch
    from safetensors import safe_open  # noqa: F401
    from transformers import Gemma4ForCausalLM
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    scalars = [float(x) for x in a.layer_scalars.split(",")]
    rows_np, _ = TM.heldout_rows(a.data, 1024, max_rows=8)
    rows = torch.from_numpy(rows_np).cuda()
    causal = Gemma4ForCausalLM.from_pretrained(a.ckpt, dtype=torch.float32).cuda().eval()
    exact = TM.fp32_exact().__enter__()
    z0 = logits_of(causal, rows)
    lp = torch.log_softmax(z0[:, :-1], -1)
    ref_loss = float(-lp.gather(-1, rows[:, 1:, None]).mean())
    final_scale = reparam_layer_scalars(causal, scalars)
    z1 = logits_of(causal, rows)
    d_reparam = float((z1 - z0).abs().max())
    same_argmax = bool((z1.argmax(-1) == z0.argmax(-1)).all())
    C.log(f"export: reparam max|dlogit| {d_reparam:.2e}, same argmax {same_argmax}, final stream scale {final_scale}")
    cg, _ = to_release_layout(causal)
    z2 = logits_of(cg, rows)
    d_layout = float((z2 - z1).abs().max())
    C.log(f"export: release layout max|dlogit| vs CausalLM {d_layout:.2e}")
    exact.__exit__(None, None, None)
    cg.to(torch.bfloat16)
    cg.config.dtype = torch.bfloat16
    os.makedirs(a.out, exist_ok=True)
    for fn in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(a.out, fn)):
            os.remove(os.path.join(a.out, fn))
    cg.save_pretrained(a.out)
    native, _rel = normalize_config_json(a.out, a.fixtures)
    write_gen_config(a.out, TM.TARGET_GEN_CONFIG)
    copy_tokenizer(a.tokenizer or a.out, a.out)
    hdr = TM.safetensors_header(os.path.join(a.out, "model.safetensors"))
    keys = sorted(k for k in hdr if k != "__metadata__")
    dtypes = sorted({hdr[k]["dtype"] for k in keys})
    n_params = sum(math.prod(hdr[k]["shape"]) for k in keys)
    C.log(f"export: {len(keys)} tensors, dtypes {dtypes}, {n_params} params; e.g. {keys[:3]}")
    chk = reload_and_check(a.out, rows, ref_loss, scalars)
    size = os.path.getsize(os.path.join(a.out, "model.safetensors"))
    res = {"reparam_max_dlogit": d_reparam, "reparam_same_argmax": same_argmax, "layout_max_dlogit": d_layout,
           "final_stream_scale": final_scale, "layer_scalars": scalars, "n_tensors": len(keys),
           "tensor_dtypes": dtypes, "n_params": n_params, "safetensors_bytes": size,
           "all_keys_prefixed": all(k.startswith("model.language_model.") for k in keys),
           "native_config_has_per_layer_config": "per_layer_config" in (native.get("text_config") or {}),
           "native_config_has_global_head_dim": "global_head_dim" in (native.get("text_config") or {}),
           "reload": chk, "seconds": round(time.time() - t0, 1)}
    ok = chk["pass"] and d_reparam < 1e-3 and same_argmax and dtypes == ["BF16"]
    res["pass"] = bool(ok)
    train_log = C.load_json(os.path.join(a.ckpt, "train_log.json"), {})
    card = f"""# tiny-gemma4

A 13 M-parameter Gemma 4 text model (8 layers, hidden 256, head dims 256/512, PLE 16, KV sharing, k_eq_v,
double-wide MLP, softcap 30) in the `Gemma4ForConditionalGeneration` release layout, bf16, trained from scratch
for mtpserve tests by `scripts/tiny/` (docs: training-tiny-models.md). Vocabulary: 8,192-token Gemma-style BPE with
the Gemma 4 control-token ids. The tokenizer adds no BOS; the chat template does.

Not a useful language model. layer_scalar values are reparameterised to {scalars} (exact identity).

| metric | value |
|---|---|
| training steps | {train_log.get('steps')} |
| tokens seen | {train_log.get('tokens_seen')} |
| held-out loss / ppl (bf16 autocast, training) | {train_log.get('heldout_loss', float('nan')):.4f} / {train_log.get('heldout_ppl', float('nan')):.2f} |
| tokenizer.json sha256 | {C.sha256_file(os.path.join(a.out, 'tokenizer.json'))} |

The pair with `tiny-gemma4-assistant{{,-centroid}}` uses MTP query offset +1 (see mtp_convention.json there).
"""
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(card)
    C.log("export:", json.dumps(res)[:3000])
    if a.report:
        C.update_report(a.report, "export_target", res)
    if not ok:
        C.log("export: FAIL")
        sys.exit(1)


if __name__ == "__main__":
    main()
