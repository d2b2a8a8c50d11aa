#!/usr/bin/env python3
"""Build tiny random SD-XL-shaped UNets with Hugging Face diffusers and write
reference tensors for atedm's UNet tests.

Usage (from anywhere):   python3 tools/make_unet_fixtures.py

With the system python3 the script creates tools/.venv when it is missing
(python3 -m venv + pip install -r tools/requirements.txt) and re-executes
itself inside it.  Everything is built from configs: nothing is downloaded
from the Hugging Face hub.  Output: tests/fixtures/unet/<model>/...
(see tests/fixtures/README.md).  The run is deterministic: rerunning it
rewrites the same bytes.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_ROOT = os.path.join(ROOT, "tests", "fixtures", "unet")


sys.path.insert(0, HERE)
import venv_bootstrap  # noqa: E402

venv_bootstrap.ensure(__file__)

# ---------------------------------------------------------------------------
# Inside the venv from here on.
# ---------------------------------------------------------------------------

import copy  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

warnings.filterwarnings("ignore")
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()

torch.set_num_threads(1)  # same reduction order on every machine/run
torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------------------
# Model definitions
# ---------------------------------------------------------------------------
SDXL_COMMON = dict(
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    addition_embed_type="text_time",
    use_linear_projection=True,
    flip_sin_to_cos=True,
    freq_shift=0,
    act_fn="silu",
    norm_eps=1e-5,
    center_input_sample=False,
    upcast_attention=False,
)

MODELS = [
    dict(
        name="tiny-a",
        seed=1234,
        text_embeds_dim=16,
        config=dict(
            sample_size=16,
            block_out_channels=[8, 16, 16],  # head widths 4, 8, 4
            layers_per_block=2,
            transformer_layers_per_block=[1, 1, 2],
            attention_head_dim=[2, 2, 4],  # = number of heads (diffusers quirk)
            norm_num_groups=8,
            cross_attention_dim=32,
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,
        ),
        batch=2,
        latent_hw=(16, 24),  # non-square
        seq_len=77,
        timestep=[981.0, 981.0],
        time_ids=[[128.0, 192.0, 0.0, 0.0, 128.0, 192.0]] * 2,
        fp16_variant=True,
        sharded=True,
        single_dtype="fp16",
    ),
    dict(
        name="tiny-b",
        seed=5678,
        text_embeds_dim=12,
        config=dict(
            sample_size=16,
            block_out_channels=[8, 12, 18],  # head widths 8, 6, 6; 9 channels per group
            layers_per_block=1,
            transformer_layers_per_block=[1, 2, 3],
            attention_head_dim=[1, 2, 3],  # = number of heads (diffusers quirk)
            norm_num_groups=2,
            cross_attention_dim=24,
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=12 + 6 * 4,
        ),
        batch=2,
        latent_hw=(16, 16),
        seq_len=7,
        timestep=[999.0, 1.0],
        time_ids=[[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0],
                  [512.0, 768.0, 16.0, 32.0, 1024.0, 1024.0]],
        fp16_variant=False,
        sharded=False,
        single_dtype="fp32",
    ),
]

SHARD_SIZE = "300KB"


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
@torch.no_grad()
def perturb_(model, seed):
    """Overwrite every parameter with seeded random values.

    norm weights: 1 + 0.1*randn; every bias: 0.1*randn; other tensors:
    randn * gain / sqrt(fan_in) so activations stay O(1) through the net."""
    gen = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    norm_params = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, norm_types):
            for pname, _ in mod.named_parameters(recurse=False):
                norm_params.add(f"{mname}.{pname}" if mname else pname)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name in norm_params and name.endswith(".weight"):
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith(".bias"):
            p.copy_(0.1 * noise)
        else:
            fan_in = p[0].numel() if p.dim() > 1 else p.numel()
            gain = 1.0
            p.copy_(noise * (gain / fan_in ** 0.5))
    for name, b in model.named_buffers():
        raise RuntimeError(f"unexpected buffer {name}")


# ---------------------------------------------------------------------------
# diffusers -> original (ldm / sgm) single-file key mapping
# ---------------------------------------------------------------------------
RESNET_MAP = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
]


def _resnet(rest):
    for d, o in RESNET_MAP:
        if rest.startswith(d):
            return o + rest[len(d):]
    raise KeyError(rest)


def diffusers_to_original_key(key, cfg):
    """Map one diffusers UNet2DConditionModel key to its SD-XL single-file name
    (without the 'model.diffusion_model.' prefix)."""
    L = cfg["layers_per_block"]
    nb = len(cfg["block_out_channels"])
    up_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    top = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for d, o in top.items():
        if key.startswith(d):
            return o + key[len(d):]
    p = key.split(".")
    if p[0] == "down_blocks":
        i = int(p[1])
        kind = p[2]
        if kind in ("resnets", "attentions"):
            j = int(p[3])
            rest = ".".join(p[4:])
            n = i * (L + 1) + j + 1
            if kind == "resnets":
                return f"input_blocks.{n}.0.{_resnet(rest)}"
            return f"input_blocks.{n}.1.{rest}"
        if kind == "downsamplers":
            assert p[3] == "0" and p[4] == "conv" and i < nb - 1
            n = (i + 1) * (L + 1)
            return f"input_blocks.{n}.0.op.{'.'.join(p[5:])}"
    if p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet(rest)}"
        if kind == "attentions":
            assert j == 0
            return f"middle_block.1.{rest}"
    if p[0] == "up_blocks":
        i = int(p[1])
        kind = p[2]
        if kind in ("resnets", "attentions"):
            j = int(p[3])
            rest = ".".join(p[4:])
            n = i * (L + 1) + j  # up blocks have layers_per_block + 1 resnets
            if kind == "resnets":
                return f"output_blocks.{n}.0.{_resnet(rest)}"
            return f"output_blocks.{n}.1.{rest}"
        if kind == "upsamplers":
            assert p[3] == "0" and p[4] == "conv" and i < nb - 1
            n = i * (L + 1) + L
            slot = 2 if up_attn[i] else 1
            return f"output_blocks.{n}.{slot}.conv.{'.'.join(p[5:])}"
    raise KeyError(f"unmapped key {key}")


def to_single_file(state_dict, cfg):
    out = {}
    for k, v in state_dict.items():
        nk = "model.diffusion_model." + diffusers_to_original_key(k, cfg)
        assert nk not in out, nk
        out[nk] = v.detach().contiguous()
    return out


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def make_inputs(spec):
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    cfg = spec["config"]
    b = spec["batch"]
    h, w = spec["latent_hw"]
    return {
        "sample": torch.randn((b, 4, h, w), generator=gen),
        "timestep": torch.tensor(spec["timestep"], dtype=torch.float32),
        "encoder_hidden_states": torch.randn(
            (b, spec["seq_len"], cfg["cross_attention_dim"]), generator=gen),
        "text_embeds": torch.randn((b, spec["text_embeds_dim"]), generator=gen),
        "time_ids": torch.tensor(spec["time_ids"], dtype=torch.float32),
    }


@torch.no_grad()
def forward(model, inp):
    model.eval()
    return model(
        inp["sample"],
        inp["timestep"],
        encoder_hidden_states=inp["encoder_hidden_states"],
        added_cond_kwargs={"text_embeds": inp["text_embeds"], "time_ids": inp["time_ids"]},
        return_dict=False,
    )[0].contiguous()


def dir_size(path):
    total = 0
    for dp, _, fns in os.walk(path):
        for fn in fns:
            total += os.path.getsize(os.path.join(dp, fn))
    return total


def stat(t):
    return f"std {t.std().item():.4f}  max|.| {t.abs().max().item():.4f}"


def load_single_file(path, config_root):
    """Load an original-layout single file with diffusers' own loader, offline."""
    return UNet2DConditionModel.from_single_file(
        path,
        config=config_root,
        subfolder="unet",
        local_files_only=True,
        torch_dtype=torch.float32,
    )


def inverse_load(path, cfg, ref_model):
    """Independent check: invert the mapping and load_state_dict(strict=True)."""
    sf = load_file(path)
    inv = {"model.diffusion_model." + diffusers_to_original_key(k, cfg): k
           for k in ref_model.state_dict()}
    assert set(inv) == set(sf), "single-file key set mismatch"
    m = UNet2DConditionModel.from_config(ref_model.config).to(next(iter(sf.values())).dtype)
    m.load_state_dict({inv[k]: v for k, v in sf.items()}, strict=True)
    return m


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def build(spec):
    name = spec["name"]
    out_dir = os.path.join(OUT_ROOT, name)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    cfg = dict(SDXL_COMMON, **spec["config"])
    torch.manual_seed(spec["seed"])
    model = UNet2DConditionModel(**cfg)
    perturb_(model, spec["seed"])
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())

    inp = make_inputs(spec)
    out = forward(model, inp)
    assert torch.isfinite(out).all(), "non-finite output"
    std = out.std().item()
    assert 0.1 <= std <= 10.0, f"output std {std} out of range"

    # diffusers layout, f32
    unet_dir = os.path.join(out_dir, "unet")
    model.save_pretrained(unet_dir, safe_serialization=True)
    reloaded = UNet2DConditionModel.from_pretrained(out_dir, subfolder="unet", local_files_only=True)
    assert torch.equal(forward(reloaded, inp), out), "save_pretrained round trip differs"

    outputs = {"out": out}
    lines = [f"{name}: {n_params:,} params; out {tuple(out.shape)} {stat(out)}"]

    if spec.get("fp16_variant"):
        half = copy.deepcopy(model).half()
        half.save_pretrained(os.path.join(out_dir, "unet_fp16"), variant="fp16",
                             safe_serialization=True)
        m16 = UNet2DConditionModel.from_pretrained(
            out_dir, subfolder="unet_fp16", variant="fp16", torch_dtype=torch.float16,
            local_files_only=True)
        assert all(p.dtype == torch.float16 for p in m16.parameters())
        m16 = m16.float()
        out16 = forward(m16, inp)
        assert torch.isfinite(out16).all()
        outputs["out_fp16"] = out16
        lines.append(f"  out_fp16 {stat(out16)}  max|out_fp16-out| "
                     f"{(out16 - out).abs().max().item():.2e}")

    if spec.get("sharded"):
        shard_dir = os.path.join(out_dir, "unet_sharded")
        model.save_pretrained(shard_dir, max_shard_size=SHARD_SIZE, safe_serialization=True)
        shards = sorted(f for f in os.listdir(shard_dir) if f.endswith(".safetensors"))
        assert len(shards) >= 2, shards
        assert os.path.exists(os.path.join(shard_dir, "diffusion_pytorch_model.safetensors.index.json"))
        ms = UNet2DConditionModel.from_pretrained(out_dir, subfolder="unet_sharded",
                                                  local_files_only=True)
        assert torch.equal(forward(ms, inp), out), "sharded round trip differs"
        lines.append(f"  unet_sharded: {len(shards)} shards")

    # single-file (original SD-XL "model.diffusion_model.*") layout.  The real
    # sd_xl_base_1.0.safetensors is all F16, so tiny-a's single file is F16
    # (reference: out_fp16); tiny-b's is F32 (reference: out).
    single_fp16 = spec.get("single_dtype") == "fp16"
    ref_model, ref_out = (m16, out16) if single_fp16 else (model, out)
    sd = model.state_dict()
    if single_fp16:
        sd = {k: v.half() for k, v in sd.items()}
    single = os.path.join(out_dir, "single.safetensors")
    save_file(to_single_file(sd, cfg), single)
    # (1) diffusers' own converter (convert_ldm_unet_checkpoint), offline, with the local config
    m_sf = load_single_file(single, out_dir)
    sd_ref, sd_sf = ref_model.state_dict(), m_sf.state_dict()
    assert set(sd_ref) == set(sd_sf), "from_single_file key set differs"
    assert all(torch.equal(sd_ref[k], sd_sf[k]) for k in sd_ref), "from_single_file weights differ"
    assert torch.equal(forward(m_sf, inp), ref_out), "from_single_file output differs"
    # (2) inverse of our own mapping + load_state_dict(strict=True)
    m_inv = inverse_load(single, cfg, model).float()
    assert torch.equal(forward(m_inv, inp), ref_out), "inverse-mapping load differs"
    lines.append(f"  single.safetensors ({'F16' if single_fp16 else 'F32'}, {len(sd)} tensors): "
                 f"from_single_file and inverse mapping give identical weights and "
                 f"{'out_fp16' if single_fp16 else 'out'}")

    # every conditioning path must matter (the output is not dominated by one path)
    def rel_change(**repl):
        alt = dict(inp, **repl)
        return ((forward(model, alt) - out).norm() / out.norm()).item()
    g = torch.Generator().manual_seed(spec["seed"] + 2)
    sens = {
        "encoder_hidden_states": rel_change(encoder_hidden_states=torch.randn(
            inp["encoder_hidden_states"].shape, generator=g)),
        "text_embeds": rel_change(text_embeds=torch.randn(inp["text_embeds"].shape, generator=g)),
        "time_ids": rel_change(time_ids=inp["time_ids"] * 0.5),
        "timestep": rel_change(timestep=inp["timestep"] * 0.5),
        "sample": rel_change(sample=torch.randn(inp["sample"].shape, generator=g)),
    }
    for k, v in sens.items():
        assert v > 0.02, f"output barely depends on {k} ({v})"
    lines.append("  relative output change when replacing: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in sens.items()))

    save_file({k: v.contiguous() for k, v in inp.items()}, os.path.join(out_dir, "inputs.safetensors"))
    save_file(outputs, os.path.join(out_dir, "outputs.safetensors"))
    lines.append(f"  fixture size {dir_size(out_dir):,} bytes")
    return lines


def main():
    t0 = time.time()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}", flush=True)
    os.makedirs(OUT_ROOT, exist_ok=True)
    summary = []
    for spec in MODELS:
        summary += build(spec)
    print("\n".join(summary))
    print(f"total tests/fixtures/unet: {dir_size(OUT_ROOT):,} bytes; {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
