#!/usr/bin/env python3
"""Build one tiny random SD-XL text-to-image pipeline with Hugging Face diffusers /
transformers and write reference tensors for atedm's end-to-end tests.

Usage (from anywhere):   python3 tools/make_pipeline_fixtures.py

With the system python3 the script creates tools/.venv when it is missing
(python3 -m venv + pip install -r tools/requirements.txt) and re-executes
itself inside it.  Everything is built from configs: nothing is downloaded
from the Hugging Face hub.  The CLIP BPE vocabulary comes from the MIT-licensed
bpe_simple_vocab_16e6.txt.gz shipped in the open_clip_torch wheel (installed
without dependencies; only the data file is used).
Output: tests/fixtures/pipeline/... (see tests/fixtures/README.md).  The run is
deterministic: rerunning it rewrites the same bytes.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_ROOT = os.path.join(ROOT, "tests", "fixtures", "pipeline")


sys.path.insert(0, HERE)
import venv_bootstrap  # noqa: E402

venv_bootstrap.ensure(__file__)

# ---------------------------------------------------------------------------
# Inside the venv from here on.
# ---------------------------------------------------------------------------

import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

sys.path.insert(0, HERE)
from make_unet_fixtures import SDXL_COMMON, to_single_file as unet_to_single_file  # noqa: E402
from clip_vocab import clip_vocab_files, write_tokenizer_folder  # noqa: E402

warnings.filterwarnings("ignore")
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

torch.set_num_threads(1)  # same reduction order on every machine/run
torch.use_deterministic_algorithms(True)

SEED = 2024

# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------
# Special-token ids as in the real SD-XL text_encoder*/config.json (bos 0, eos 2, pad 1):
# eos_token_id == 2 makes transformers pool at argmax(input_ids), the legacy CLIP rule.
# The two hidden sizes must differ: diffusers' from_single_file tells CLIP-L from bigG
# by comparing the checkpoint's position-embedding width with each model's (with equal
# widths it loads the CLIP-L weights into text_encoder_2 too).
TE1_CONFIG = dict(
    vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, projection_dim=16, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
TE2_CONFIG = dict(
    vocab_size=49408, hidden_size=20, intermediate_size=80, num_hidden_layers=3,
    num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
    layer_norm_eps=1e-5, projection_dim=16, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
ADD_TIME_DIM = 8
UNET_CONFIG = dict(
    SDXL_COMMON,
    sample_size=16,
    block_out_channels=[8, 16, 16],
    layers_per_block=2,
    transformer_layers_per_block=[1, 1, 2],
    attention_head_dim=[2, 2, 4],  # = number of heads (diffusers quirk)
    norm_num_groups=8,
    cross_attention_dim=TE1_CONFIG["hidden_size"] + TE2_CONFIG["hidden_size"],
    addition_time_embed_dim=ADD_TIME_DIM,
    projection_class_embeddings_input_dim=TE2_CONFIG["projection_dim"] + 6 * ADD_TIME_DIM,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 16, 16, 16],
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    scaling_factor=0.13025,
    force_upcast=True,
)
SCHEDULER_CONFIG = dict(  # stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    trained_betas=None,
    prediction_type="epsilon",
    interpolation_type="linear",
    use_karras_sigmas=False,
    timestep_spacing="leading",
    steps_offset=1,
)

HEIGHT, WIDTH = 64, 96  # latents 8 x 12 (not square)
STEPS = 4
GUIDANCE = 5.0
PROMPT = "A photo of an astronaut riding a horse on Mars, 4k, highly detailed!"
NEGATIVE = "blurry, low quality, watermark"
RUNS = [
    dict(name="cfg", negative_prompt=NEGATIVE, guidance_rescale=0.0),
    dict(name="empty_negative", negative_prompt=None, guidance_rescale=0.0),
    dict(name="rescale", negative_prompt=NEGATIVE, guidance_rescale=0.7),
]

# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
@torch.no_grad()
def perturb_(model, seed, embedding_std=None):
    """Overwrite every parameter with seeded random values, then round to f16.

    norm weights: 1 + 0.1*randn; every bias: 0.1*randn; embeddings: std from
    embedding_std; other tensors: randn / sqrt(fan_in).  Buffers are left alone."""
    gen = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    norm_params = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, norm_types):
            for pname, _ in mod.named_parameters(recurse=False):
                norm_params.add(f"{mname}.{pname}" if mname else pname)
    embedding_std = embedding_std or {}
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name in embedding_std:
            p.copy_(embedding_std[name] * noise)
        elif name in norm_params and name.endswith(".weight"):
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith(".bias"):
            p.copy_(0.1 * noise)
        else:
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            p.copy_(noise / fan_in ** 0.5)
        # the fixtures store F16 weights: the f32 references use exactly these values
        p.copy_(p.half().float())


def build_components():
    torch.manual_seed(SEED)
    te1 = CLIPTextModel(CLIPTextConfig(**TE1_CONFIG)).eval()
    perturb_(te1, SEED + 1, {"embeddings.token_embedding.weight": 1.0,
                             "embeddings.position_embedding.weight": 0.5})
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TE2_CONFIG)).eval()
    perturb_(te2, SEED + 2, {"text_model.embeddings.token_embedding.weight": 1.0,
                             "text_model.embeddings.position_embedding.weight": 0.5})
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    perturb_(unet, SEED + 3)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    perturb_(vae, SEED + 4)
    sched = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    return te1, te2, unet, vae, sched


# ---------------------------------------------------------------------------
# diffusers/transformers -> original SD-XL single-file names
# ---------------------------------------------------------------------------
def te1_to_single(sd):
    """CLIP-L: transformers names (with the text_model. level that transformers < 5.6 had)."""
    out = {}
    for k, v in sd.items():
        out["conditioner.embedders.0.transformer.text_model." + k] = v
    # the real file also carries the position_ids buffer (0..76)
    out["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = (
        torch.arange(77, dtype=torch.float32)[None])
    return out


def te2_to_single(sd, n_layers):
    """OpenCLIP bigG names under conditioner.embedders.1.model."""
    P = "conditioner.embedders.1.model."
    tm = "text_model."
    out = {
        P + "token_embedding.weight": sd[tm + "embeddings.token_embedding.weight"],
        P + "positional_embedding": sd[tm + "embeddings.position_embedding.weight"],
        P + "ln_final.weight": sd[tm + "final_layer_norm.weight"],
        P + "ln_final.bias": sd[tm + "final_layer_norm.bias"],
        # OpenCLIP computes x @ text_projection: store [hidden, proj] (transposed nn.Linear)
        P + "text_projection": sd["text_projection.weight"].t().contiguous(),
        P + "logit_scale": torch.tensor(math.log(100.0)),  # present in the real file, unused
    }
    used = set(k for k in sd if not k.startswith(tm + "encoder.layers."))
    for i in range(n_layers):
        s = f"{tm}encoder.layers.{i}."
        o = f"{P}transformer.resblocks.{i}."
        for suf in ("weight", "bias"):
            out[o + f"attn.in_proj_{suf}"] = torch.cat(
                [sd[s + f"self_attn.{x}_proj.{suf}"] for x in "qkv"], 0)
            out[o + f"attn.out_proj.{suf}"] = sd[s + f"self_attn.out_proj.{suf}"]
            out[o + f"ln_1.{suf}"] = sd[s + f"layer_norm1.{suf}"]
            out[o + f"ln_2.{suf}"] = sd[s + f"layer_norm2.{suf}"]
            out[o + f"mlp.c_fc.{suf}"] = sd[s + f"mlp.fc1.{suf}"]
            out[o + f"mlp.c_proj.{suf}"] = sd[s + f"mlp.fc2.{suf}"]
            used.update(s + f"{a}.{suf}" for a in (
                "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"))
    assert used == set(sd), set(sd) ^ used
    return out


VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
              "conv_shortcut": "nin_shortcut"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key_to_ldm(key, n_levels):
    p = key.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return key
    part, rest = p[0], p[1:]
    top = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
    if rest[0] in top:
        return ".".join([part, top[rest[0]]] + rest[1:])

    def resnet(r):
        return VAE_RESNET[r[0]] + "." + ".".join(r[1:])

    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{part}.mid.block_{int(rest[2]) + 1}.{resnet(rest[3:])}"
        assert rest[1] == "attentions" and rest[2] == "0"
        inner = ".".join(rest[3:-1])
        return f"{part}.mid.attn_1.{VAE_ATTN[inner]}.{rest[-1]}"
    if rest[0] in ("down_blocks", "up_blocks"):
        i = int(rest[1])
        if rest[0] == "down_blocks":
            lvl, name, sampler = i, "down", "downsample"
        else:
            lvl, name, sampler = n_levels - 1 - i, "up", "upsample"  # up index reversed
        if rest[2] == "resnets":
            return f"{part}.{name}.{lvl}.block.{rest[3]}.{resnet(rest[4:])}"
        if rest[2] in ("downsamplers", "upsamplers"):
            assert rest[3] == "0" and rest[4] == "conv"
            return f"{part}.{name}.{lvl}.{sampler}.conv.{rest[5]}"
    raise KeyError(key)


def vae_to_single(sd, n_levels):
    out = {}
    for k, v in sd.items():
        nk = "first_stage_model." + vae_key_to_ldm(k, n_levels)
        if ".mid.attn_1." in nk and nk.endswith(".weight") and v.dim() == 2:
            v = v[:, :, None, None]  # LDM uses 1x1 convs for q, k, v, proj_out
        assert nk not in out, nk
        out[nk] = v
    return out


KNOWN_SINGLE_FILE_KEYS = [
    "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.label_emb.0.0.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight",
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.input_blocks.4.1.proj_in.weight",
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight",
    "model.diffusion_model.middle_block.1.proj_out.weight",
    "model.diffusion_model.output_blocks.2.2.conv.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight",
    "model.diffusion_model.out.2.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
    "conditioner.embedders.1.model.positional_embedding",
    "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
    "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight",
    "conditioner.embedders.1.model.ln_final.weight",
    "conditioner.embedders.1.model.text_projection",
    "first_stage_model.post_quant_conv.weight",
    "first_stage_model.encoder.down.0.downsample.conv.weight",
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
    "first_stage_model.decoder.mid.block_1.norm1.weight",
    "first_stage_model.decoder.mid.attn_1.q.weight",
    "first_stage_model.decoder.up.3.upsample.conv.weight",
    "first_stage_model.decoder.up.0.block.1.conv2.weight",
    "first_stage_model.decoder.norm_out.weight",
]


def single_file_state(pipe):
    sd = {}
    sd.update(unet_to_single_file(pipe.unet.state_dict(), dict(pipe.unet.config)))
    sd.update(te1_to_single(pipe.text_encoder.state_dict()))
    sd.update(te2_to_single(pipe.text_encoder_2.state_dict(), TE2_CONFIG["num_hidden_layers"]))
    sd.update(vae_to_single(pipe.vae.state_dict(), len(VAE_CONFIG["block_out_channels"])))
    return {k: v.detach().to(torch.float16).contiguous() for k, v in sorted(sd.items())}


# ---------------------------------------------------------------------------
# Reference runs
# ---------------------------------------------------------------------------
def initial_latents():
    gen = torch.Generator().manual_seed(SEED + 5)
    return torch.randn((1, 4, HEIGHT // 8, WIDTH // 8), generator=gen)


@torch.no_grad()
def run_pipeline(pipe, run, latents):
    """Run the diffusers pipeline once (decoded) and once (output_type latent); capture
    every intermediate through wrappers around the pipeline's own calls."""
    cap = {"unet_in": [], "unet_t": [], "noise_pred": [], "guided": [], "steps": []}
    orig_encode, orig_decode, orig_step = pipe.encode_prompt, pipe.vae.decode, pipe.scheduler.step

    def encode_prompt(*a, **k):
        r = orig_encode(*a, **k)
        cap["encode"] = [x.clone() if x is not None else None for x in r]
        return r

    def decode(z, *a, **k):
        r = orig_decode(z, *a, **k)
        cap["vae_in"] = z.clone()
        cap["image"] = (r[0] if isinstance(r, tuple) else r.sample).clone()
        return r

    def step(model_output, *a, **k):
        cap["guided"].append(model_output.clone())
        return orig_step(model_output, *a, **k)

    def unet_hook(mod, args, kwargs, out):
        cap["unet_in"].append(args[0].clone())
        cap["unet_t"].append(torch.as_tensor(args[1]).clone())
        cap["noise_pred"].append(out[0].clone())
        cap.setdefault("unet_kwargs", kwargs)

    def on_step_end(p, i, t, kw):
        cap["steps"].append({k: v.clone() for k, v in kw.items()})
        return {}

    common = dict(
        prompt=PROMPT, negative_prompt=run["negative_prompt"], height=HEIGHT, width=WIDTH,
        num_inference_steps=STEPS, guidance_scale=GUIDANCE, guidance_rescale=run["guidance_rescale"],
        latents=latents.clone(),
    )
    pipe.encode_prompt, pipe.vae.decode, pipe.scheduler.step = encode_prompt, decode, step
    h = pipe.unet.register_forward_hook(unet_hook, with_kwargs=True)
    try:
        img01 = pipe(**common, output_type="pt", return_dict=False,
                     callback_on_step_end=on_step_end,
                     callback_on_step_end_tensor_inputs=["latents", "prompt_embeds",
                                                         "add_text_embeds", "add_time_ids"])[0]
    finally:
        h.remove()
        del pipe.encode_prompt, pipe.vae.decode, pipe.scheduler.step
    sched = pipe.scheduler
    timesteps, sigmas, init_sigma = sched.timesteps.clone(), sched.sigmas.clone(), sched.init_noise_sigma
    lat_out = pipe(**common, output_type="latent", return_dict=False)[0]

    pe, npe, ppe, nppe = cap["encode"]
    steps = cap["steps"]
    assert len(steps) == STEPS and len(cap["unet_in"]) == STEPS
    final = steps[-1]["latents"]
    assert torch.equal(lat_out, final), "output_type latent != last step latents"
    sf = pipe.vae.config.scaling_factor
    assert torch.equal(cap["vae_in"], final / sf)
    img = cap["image"]
    assert torch.equal(img01, (img / 2 + 0.5).clamp(0, 1)), "postprocess is not clamp(x/2+0.5)"
    assert torch.equal(steps[0]["prompt_embeds"], torch.cat([npe, pe]))
    assert torch.equal(steps[0]["add_text_embeds"], torch.cat([nppe, ppe]))
    if run["negative_prompt"] is None:
        assert not npe.any() and not nppe.any(), "negative embeddings should be zeros"

    tensors = {
        "latents": latents,
        "prompt_embeds": pe,
        "negative_prompt_embeds": npe,
        "pooled_prompt_embeds": ppe,
        "negative_pooled_prompt_embeds": nppe,
        "add_time_ids": steps[0]["add_time_ids"],
        "timesteps": timesteps.to(torch.float32),
        "sigmas": sigmas.to(torch.float32),
    }
    for i in range(STEPS):
        tensors[f"unet_input_step_{i}"] = cap["unet_in"][i]
        tensors[f"noise_pred_step_{i}"] = cap["noise_pred"][i]
        tensors[f"guided_noise_step_{i}"] = cap["guided"][i]
        tensors[f"latents_step_{i}"] = steps[i]["latents"]
    tensors["latents_final"] = final.clone()
    tensors["image"] = img
    ids = {}
    for tname, tok in (("tokenizer", pipe.tokenizer), ("tokenizer_2", pipe.tokenizer_2)):
        ids[f"prompt_ids_{tname}"] = tok(PROMPT, padding="max_length", max_length=77,
                                         truncation=True, return_tensors="pt").input_ids
        if run["negative_prompt"] is not None:
            ids[f"negative_ids_{tname}"] = tok(run["negative_prompt"], padding="max_length",
                                               max_length=77, truncation=True,
                                               return_tensors="pt").input_ids
    tensors.update(ids)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
    meta = {
        "prompt": PROMPT,
        "prompt_2": None,
        "negative_prompt": run["negative_prompt"],
        "negative_prompt_2": None,
        "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE,
        "guidance_rescale": run["guidance_rescale"],
        "width": WIDTH,
        "height": HEIGHT,
        "latent_shape": list(latents.shape),
        "init_noise_sigma": float(init_sigma),
        "timesteps": [float(x) for x in timesteps],
        "sigmas": [float(x) for x in sigmas],
        "unet_timesteps_passed": [float(x.reshape(-1)[0]) for x in cap["unet_t"]],
        "vae_scaling_factor": sf,
        "add_time_ids": steps[0]["add_time_ids"].tolist(),
        "token_ids": {k: v[0].tolist() for k, v in ids.items()},
        "force_zeros_for_empty_prompt": bool(pipe.config.force_zeros_for_empty_prompt),
    }
    return tensors, meta


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def dir_size(path):
    total = 0
    for dp, _, fns in os.walk(path):
        for fn in fns:
            total += os.path.getsize(os.path.join(dp, fn))
    return total


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def same_state(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), f"{what}: key sets differ: {set(sa) ^ set(sb)}"
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{what}: {k} differs"


def same_pipes(a, b, what):
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        same_state(getattr(a, name), getattr(b, name), f"{what}/{name}")
    ca, cb = ({k: v for k, v in dict(x.scheduler.config).items() if not k.startswith("_")}
              for x in (a, b))
    assert type(a.scheduler) is type(b.scheduler) and ca == cb, f"{what}: scheduler {ca} {cb}"
    assert a.vae.config.scaling_factor == b.vae.config.scaling_factor


def std(t):
    return f"std {t.std().item():.4f} max|.| {t.abs().max().item():.4f}"


def check_tokenizer_folder(folder, ref_tok, pad_token):
    tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    assert tok.pad_token == pad_token and tok.model_max_length == 77
    assert tok.backend_tokenizer.to_str() == ref_tok.backend_tokenizer.to_str(), folder
    texts = [PROMPT, NEGATIVE, "", "Hello   WORLD!! naïve café 1234 <|endoftext|> it's"]
    for t in texts:
        a = tok(t, padding="max_length", max_length=77, truncation=True).input_ids
        b = ref_tok(t, padding="max_length", max_length=77, truncation=True).input_ids
        assert a == b, (folder, t)
    return tok


TOKENIZER_TEXTS = [
    PROMPT,
    NEGATIVE,
    "",
    "!!",
    "Hello!! world?! (wow)",
    "a red cube!",
    "  Multiple   spaces,\ttabs\nand newlines  ",
    "naïve café, ÉCOLE, 東京, emoji 🙂",
    "it's 1234 isn't we'll they're",
    "<|endoftext|> inside <|startoftext|>",
    "word " * 80,  # truncated to 75 tokens + EOS
]


def tokenizer_cases(tok1, tok2):
    """Token ids (padded to 77 as the pipeline does) for tricky strings from both tokenizers."""
    cases = []
    for text in TOKENIZER_TEXTS:
        row = {"text": text}
        for name, tok in (("tokenizer", tok1), ("tokenizer_2", tok2)):
            row[name] = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
            assert len(row[name]) == 77
        cases.append(row)
    return cases


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def main():
    t0 = time.time()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    if os.path.exists(OUT_ROOT):
        shutil.rmtree(OUT_ROOT)
    os.makedirs(OUT_ROOT)
    pipe_dir = os.path.join(OUT_ROOT, "sdxl-tiny")
    single_path = os.path.join(OUT_ROOT, "sdxl-tiny.safetensors")

    # --- tokenizers ---------------------------------------------------------
    vocab_json, merges_txt = clip_vocab_files()
    tmp_tok = os.path.join(OUT_ROOT, "_tok_src")
    os.makedirs(tmp_tok)
    with open(os.path.join(tmp_tok, "vocab.json"), "w", encoding="utf-8") as f:
        f.write(vocab_json)
    with open(os.path.join(tmp_tok, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(merges_txt)
    tok1 = CLIPTokenizer(vocab=os.path.join(tmp_tok, "vocab.json"),
                         merges=os.path.join(tmp_tok, "merges.txt"),
                         pad_token="<|endoftext|>", model_max_length=77)
    tok2 = CLIPTokenizer(vocab=os.path.join(tmp_tok, "vocab.json"),
                         merges=os.path.join(tmp_tok, "merges.txt"),
                         pad_token="!", model_max_length=77)
    shutil.rmtree(tmp_tok)
    # known ids of the real CLIP vocabulary
    assert tok1("a photo of an astronaut riding a horse").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert tok1.pad_token_id == 49407 and tok2.pad_token_id == 0

    # --- models -------------------------------------------------------------
    te1, te2, unet, vae, sched = build_components()
    pipe_mem = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2,
        unet=unet, scheduler=sched, add_watermarker=False)
    counts = {n: n_params(getattr(pipe_mem, n))
              for n in ("text_encoder", "text_encoder_2", "unet", "vae")}

    # --- (a) diffusers folder: fp16 variant of the f16-rounded weights --------
    half = StableDiffusionXLPipeline(
        vae=copy.deepcopy(vae).half(), text_encoder=copy.deepcopy(te1).half(),
        text_encoder_2=copy.deepcopy(te2).half(), tokenizer=tok1, tokenizer_2=tok2,
        unet=copy.deepcopy(unet).half(), scheduler=sched, add_watermarker=False)
    half.save_pretrained(pipe_dir, safe_serialization=True, variant="fp16")
    del half
    # transformers >= 5.6 flattened CLIPTextModel (no text_model. level) and save_pretrained
    # writes the flat names; the real SD-XL repo (and CLIPTextModelWithProjection) use
    # text_model.*, so the fixture is rewritten to the real layout (loading is checked below).
    te1_file = os.path.join(pipe_dir, "text_encoder", "model.fp16.safetensors")
    te1_sd = load_file(te1_file)
    if not all(k.startswith("text_model.") for k in te1_sd):
        save_file({"text_model." + k: v for k, v in sorted(te1_sd.items())}, te1_file,
                  metadata={"format": "pt"})
    for name, tok in (("tokenizer", tok1), ("tokenizer_2", tok2)):
        write_tokenizer_folder(tok, os.path.join(pipe_dir, name), vocab_json, merges_txt)
    check_tokenizer_folder(os.path.join(pipe_dir, "tokenizer"), tok1, "<|endoftext|>")
    check_tokenizer_folder(os.path.join(pipe_dir, "tokenizer_2"), tok2, "!")
    for sub in ("text_encoder", "text_encoder_2", "unet", "vae"):
        for fn in os.listdir(os.path.join(pipe_dir, sub)):
            if fn.endswith(".safetensors"):
                assert ".fp16." in fn, fn
                assert all(v.dtype == torch.float16
                           for v in load_file(os.path.join(pipe_dir, sub, fn)).values())

    pipe = StableDiffusionXLPipeline.from_pretrained(
        pipe_dir, variant="fp16", torch_dtype=torch.float32, local_files_only=True,
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    same_pipes(pipe_mem, pipe, "from_pretrained")
    assert pipe.watermark is None
    del pipe_mem

    # --- (b) single file, original SD-XL key names, F16 ---------------------
    sf_state = single_file_state(pipe)
    for k in KNOWN_SINGLE_FILE_KEYS:  # names as they appear in sd_xl_base_1.0.safetensors
        assert k in sf_state, f"single file lacks {k}"
    assert sf_state["first_stage_model.decoder.mid.attn_1.q.weight"].dim() == 4
    save_file(sf_state, single_path)
    pipe_sf = StableDiffusionXLPipeline.from_single_file(
        single_path, config=pipe_dir, local_files_only=True, torch_dtype=torch.float32,
        add_watermarker=False)
    pipe_sf.set_progress_bar_config(disable=True)
    same_pipes(pipe, pipe_sf, "from_single_file")
    assert pipe_sf.tokenizer_2.pad_token == "!"

    # --- tokenizer cases (from the reloaded pipeline's tokenizers) -------------
    with open(os.path.join(OUT_ROOT, "tokens.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(tokenizer_cases(pipe.tokenizer, pipe.tokenizer_2), f, ensure_ascii=False)
        f.write("\n")

    # --- reference runs ---------------------------------------------------
    latents = initial_latents()
    summary = []
    for run in RUNS:
        tensors, meta = run_pipeline(pipe, run, latents)
        tensors_sf, meta_sf = run_pipeline(pipe_sf, run, latents)
        assert meta == meta_sf
        for k in tensors:
            assert torch.equal(tensors[k], tensors_sf[k]), f"single-file pipeline differs: {k}"
        save_file(tensors, os.path.join(OUT_ROOT, f"{run['name']}.safetensors"))
        with open(os.path.join(OUT_ROOT, f"{run['name']}.json"), "w", encoding="utf-8",
                  newline="\n") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
            f.write("\n")
        summary.append(run["name"] + ":")
        for k in ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                  "negative_pooled_prompt_embeds", "noise_pred_step_0", "guided_noise_step_0",
                  "latents_step_0", "latents_final", "image"):
            summary.append(f"  {k} {tuple(tensors[k].shape)} {std(tensors[k])}")
        img = tensors["image"]
        summary.append(f"  image range [{img.min().item():.3f}, {img.max().item():.3f}], "
                       f"{(img.abs() > 1).float().mean().item() * 100:.1f}% outside [-1,1]")
        summary.append(f"  timesteps {meta['timesteps']} sigmas "
                       f"{[round(s, 6) for s in meta['sigmas']]}")

    # the inputs must matter: different prompts give clearly different embeddings,
    # and each run's final latents differ from the others
    cfg_t = load_file(os.path.join(OUT_ROOT, "cfg.safetensors"))
    rsc_t = load_file(os.path.join(OUT_ROOT, "rescale.safetensors"))
    emp_t = load_file(os.path.join(OUT_ROOT, "empty_negative.safetensors"))

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()
    d_emb = rel(cfg_t["negative_prompt_embeds"], cfg_t["prompt_embeds"])
    d_pool = rel(cfg_t["negative_pooled_prompt_embeds"], cfg_t["pooled_prompt_embeds"])
    d_resc = rel(rsc_t["latents_final"], cfg_t["latents_final"])
    d_emp = rel(emp_t["latents_final"], cfg_t["latents_final"])
    d_img = rel(rsc_t["image"], cfg_t["image"])
    for name, v in (("embeds", d_emb), ("pooled", d_pool), ("rescale latents", d_resc),
                    ("empty-negative latents", d_emp), ("rescale image", d_img)):
        assert v > 0.02, f"{name} barely changes ({v})"
    summary.append(f"relative change: prompt vs negative embeds {d_emb:.2f}, pooled {d_pool:.2f}; "
                   f"final latents cfg vs rescale {d_resc:.2f}, cfg vs empty_negative {d_emp:.2f}; "
                   f"image cfg vs rescale {d_img:.2f}")

    print(f"params: {counts}")
    print(f"single file: {len(sf_state)} tensors (F16); from_single_file(config=<folder>, "
          f"local_files_only=True) gives identical weights and bit-identical outputs")
    print("\n".join(summary))
    for dp, _, fns in sorted(os.walk(OUT_ROOT)):
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            print(f"  {os.path.relpath(p, OUT_ROOT)}: {os.path.getsize(p):,}")
    print(f"total tests/fixtures/pipeline: {dir_size(OUT_ROOT):,} bytes; {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
