#!/usr/bin/env python3
"""Train atedm's demo model: a tiny SD-XL-family text-to-image pipeline (diffusers layout,
fp16 variant files) on a procedural "coloured shapes on a 3x3 grid" dataset, on the CPU.

Usage (from anywhere; the system python3 creates/uses tools/.venv like the fixture scripts):

    python3 tools/train_demo.py --out /work/demo-model

Everything (dataset, held-back captions, initialisation, batches, noise) follows fixed seeds
and fixed step counts, so a rerun retrains the same model up to floating-point reduction
order.  The defaults are the settings of the shipped run (see `<out>/atedm_demo.json`,
"training", for its measured step counts, wall times and losses).

Retraining: `python3 tools/train_demo.py --out /work/demo-model` (then copy the folder where
the engine expects it).  On the 2-core build machine, sharing the cores with a Rust build, it
takes about 70 minutes: VAE 450 steps 6.6 min, pool encoding (6276 images) 3 min, decoder
fine-tune 200 steps 7.4 min, UNet 1900 steps at batch 32 49 min (0.65 steps/s on average,
0.4-0.75), save + samples + held-back check ~3 min.  Keep OMP_WAIT_POLICY=PASSIVE (set
below) when the cores are shared: with spin-waiting, 2 threads ran ~10x slower than 1.
The shipped run itself was started with --unet-steps 2400 and, running late, resumed from its
step-1111 checkpoint with --unet-steps 1900 (so its lr curve differs from a fresh 1900-step
run between steps 1111 and 1900), and the decoder fine-tune was added afterwards in a third
start (--resume; it only changes the decoder, so the pool and the UNet stay valid);
atedm_demo.json "training.note" records this.

What it does
  1. Trains the VAE (AutoencoderKL, 4 levels = /8, 4 latent channels) on rendered images
     (MSE + a tiny KL term), first on 64x64 crops, then on full 128x128 images.
  2. Encodes a fixed pool of training images once (latent mean/logvar), sets the VAE's
     scaling_factor to 1/std of the sampled pool latents, and encodes the pool's captions
     with the two frozen, randomly initialised CLIP text encoders exactly as
     StableDiffusionXLPipeline.encode_prompt does (hidden_states[-2] of both, concatenated;
     pooled = text_encoder_2's projected output).
  2b. Fine-tunes only the VAE decoder (encoder frozen, so the pool stays valid): after the
     joint VAE run red decoded as brown, green as yellow-green, magenta as violet.
  3. Trains the UNet (epsilon prediction, DDPM scaled_linear betas 0.00085..0.012, 1000
     steps, min-SNR-5 loss weights, 10% caption dropout with ALL-ZERO prompt and pooled
     embeddings = what the pipeline feeds for an empty negative prompt with
     force_zeros_for_empty_prompt), AdamW, linear warm-up + cosine decay, EMA of the weights.
  4. Saves the pipeline (EMA UNet) as fp16 variant files + configs + tokenizer folders to
     --out, writes <out>/atedm_demo.json (dataset definition, held-back captions, training
     record), reloads it with StableDiffusionXLPipeline.from_pretrained(variant="fp16"),
     renders a sample grid of held-back captions and scores held-back captions with a simple
     colour/position check.

Work files (log, checkpoints every ~10 min, encoded pool) go to --work (default
<out>-work); `--resume` continues from the last checkpoint there.

Demo model v2 (issue 16, `--arch v2`: 4x VAE, SD-XL's level pattern with transformer depths
2 and 10) is trained over several sessions on machines that do not outlast them. `--state DIR`
keeps a small resumable state in the repository (tools/train_state/demo-v2: the finished VAE,
the UNet's EMA weights in f16, state.json with steps, losses and resumes); a new machine
resumes from it, and `--stop-after SECONDS` saves it and stops in time to commit:

    python3 tools/train_demo.py --out /work/demo-v2 --arch v2 \
        --state tools/train_state/demo-v2 --unet-steps 4000 --warmup 200 --stop-after 5000
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import venv_bootstrap  # noqa: E402

venv_bootstrap.ensure(__file__)
# With fewer free cores than threads (a parallel build), OpenMP's default spin-waiting makes
# 2 threads ~10x slower than 1; passive waiting makes 2 threads at least as fast as 1.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from clip_vocab import clip_tokenizers, clip_vocab_files, write_tokenizer_folder  # noqa: E402
from make_unet_fixtures import SDXL_COMMON  # noqa: E402

warnings.filterwarnings("ignore")
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

# ---------------------------------------------------------------------------
# Dataset definition (written to <out>/atedm_demo.json)
# ---------------------------------------------------------------------------
IMAGE_SIZE = 128
BACKGROUND = (16, 16, 16)
# six fully saturated hues, 60 degrees apart on the hue circle
PALETTE = {
    "red": (255, 0, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "magenta": (255, 0, 255),
}
HUES = {"red": 0, "yellow": 60, "green": 120, "cyan": 180, "blue": 240, "magenta": 300}
SHAPES = ["circle", "square", "triangle"]
SIZES = {"small": 9, "large": 17}  # half-size h in pixels at 128 px
GRID = [1 / 6, 3 / 6, 5 / 6]
# name -> (x, y) of the cell centre in [0,1] image coordinates (x right, y down)
POSITIONS = {
    "top left": (GRID[0], GRID[0]), "top": (GRID[1], GRID[0]), "top right": (GRID[2], GRID[0]),
    "left": (GRID[0], GRID[1]), "center": (GRID[1], GRID[1]), "right": (GRID[2], GRID[1]),
    "bottom left": (GRID[0], GRID[2]), "bottom": (GRID[1], GRID[2]),
    "bottom right": (GRID[2], GRID[2]),
}
CELLS = {name: [int(round(x * 3 - 0.5)), int(round(y * 3 - 0.5))]  # [col, row]
         for name, (x, y) in POSITIONS.items()}
P_SINGLE = 0.5  # share of one-shape captions in training batches
N_HELD_SINGLE = 48
N_HELD_PAIR = 48
DATA_SEED = 8

SHAPE_DOC = {
    "circle": "disc of radius h around the centre",
    "square": "axis-aligned square of half-side h (side 2h) around the centre",
    "triangle": "isosceles triangle pointing up: vertices (cx, cy-h), (cx-h, cy+h), (cx+h, cy+h)",
}


def describe(obj):
    """obj = (size, colour, shape, position) -> 'a large red circle at the top left'."""
    size, colour, shape, pos = obj
    return f"a {size} {colour} {shape} at the {pos}"


def caption(objs):
    return " and ".join(describe(o) for o in objs)


ALL_OBJECTS = [(s, c, sh, p) for s in SIZES for c in PALETTE for sh in SHAPES for p in POSITIONS]


def pair_key(objs):
    return frozenset(objs)


def held_back_sets():
    """Fixed held-back captions: 48 one-shape objects and 48 two-shape pairs (the two shapes
    differ in position and colour; the caption order is random; both orders are held back)."""
    rng = random.Random(DATA_SEED)
    singles = sorted(rng.sample(ALL_OBJECTS, N_HELD_SINGLE), key=ALL_OBJECTS.index)
    pairs, keys = [], set()
    while len(pairs) < N_HELD_PAIR:
        a, b = rng.sample(ALL_OBJECTS, 2)
        if a[3] == b[3] or a[1] == b[1] or pair_key((a, b)) in keys:
            continue
        keys.add(pair_key((a, b)))
        pairs.append((a, b))
    return singles, pairs


HELD_SINGLE, HELD_PAIR = held_back_sets()
HELD_SINGLE_SET = set(HELD_SINGLE)
HELD_PAIR_KEYS = {pair_key(p) for p in HELD_PAIR}
TRAIN_SINGLES = [o for o in ALL_OBJECTS if o not in HELD_SINGLE_SET]


def random_pair(rng):
    """A training two-shape scene: different positions, different colours, not held back."""
    while True:
        a, b = rng.sample(ALL_OBJECTS, 2)
        if a[3] != b[3] and a[1] != b[1] and pair_key((a, b)) not in HELD_PAIR_KEYS:
            return (a, b)


def random_scene(rng):
    if rng.random() < P_SINGLE:
        return (rng.choice(TRAIN_SINGLES),)
    return random_pair(rng)


_YY, _XX = torch.meshgrid(torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5,
                          torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5, indexing="ij")


def coverage(obj):
    """Anti-aliased coverage in [0,1] (1-pixel ramp on a signed distance)."""
    size, _, shape, pos = obj
    h = float(SIZES[size])
    cx, cy = POSITIONS[pos][0] * IMAGE_SIZE, POSITIONS[pos][1] * IMAGE_SIZE
    dx, dy = _XX - cx, _YY - cy
    if shape == "circle":
        d = torch.sqrt(dx * dx + dy * dy) - h
    elif shape == "square":
        d = torch.maximum(dx.abs(), dy.abs()) - h
    else:
        s5 = math.sqrt(5.0)
        base = dy - h
        left = (-2.0 * (dx + h) - (dy - h)) / s5
        right = (2.0 * (dx - h) - (dy - h)) / s5
        d = torch.maximum(base, torch.maximum(left, right))
    return (0.5 - d).clamp(0.0, 1.0)


def render(objs):
    """float32 [3,H,W] in [-1,1]."""
    img = torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1).expand(3, IMAGE_SIZE,
                                                                             IMAGE_SIZE).clone()
    for obj in objs:
        cov = coverage(obj)
        col = torch.tensor(PALETTE[obj[1]], dtype=torch.float32).view(3, 1, 1)
        img = img * (1 - cov) + col * cov
    return img / 127.5 - 1.0


def render_batch(scenes):
    return torch.stack([render(s) for s in scenes])


def dataset_spec():
    return {
        "description": "atedm demo dataset: one or two flat-coloured shapes on a dark background, "
                       "each centred in a cell of a 3x3 grid. Images are rendered exactly (no "
                       "jitter): a caption fully determines its image.",
        "image_size": IMAGE_SIZE,
        "background_rgb": list(BACKGROUND),
        "palette_rgb": {k: list(v) for k, v in PALETTE.items()},
        "palette_hue_degrees": HUES,
        "shapes": SHAPES,
        "shape_geometry": SHAPE_DOC,
        "sizes_half_px": SIZES,
        "sizes_note": "h = radius (circle) / half-side (square) / half-width and half-height "
                      "(triangle), in pixels of the 128 px image; every shape fits the box "
                      "centre +- h",
        "positions_xy": {k: [round(x, 6), round(y, 6)] for k, (x, y) in POSITIONS.items()},
        "positions_cell_col_row": CELLS,
        "positions_note": "(x, y) of the grid-cell centre in [0,1] image coordinates, x to "
                          "the right, y down; multiply by image_size for pixels; cells are "
                          "the image split into 3x3 equal squares",
        "anti_aliasing": "coverage = clamp(0.5 - signed_distance_px, 0, 1) at pixel centres; "
                         "pixel = background*(1-coverage) + colour*coverage, shapes drawn in "
                         "caption order",
        "caption_grammar": {
            "object": "a {size} {colour} {shape} at the {position}",
            "one_shape": "{object}",
            "two_shapes": "{object} and {object}",
            "constraints": "the two shapes of a caption never share a position and never "
                           "share a colour",
            "example": caption(((("large", "red", "circle", "top left")),
                                 ("small", "blue", "square", "bottom right"))),
        },
        "training_mix": {"one_shape": P_SINGLE, "two_shapes": 1 - P_SINGLE},
        "held_back_note": "never used in training (neither the VAE nor the UNet saw these "
                          "images or captions; for two-shape captions both orders are held "
                          f"back); chosen with random.Random({DATA_SEED})",
        "held_back_one_shape": [caption((o,)) for o in HELD_SINGLE],
        "held_back_two_shapes": [caption(p) for p in HELD_PAIR],
        "held_back_one_shape_objects": [dict(zip(("size", "colour", "shape", "position"), o))
                                        for o in HELD_SINGLE],
        "held_back_two_shapes_objects": [[dict(zip(("size", "colour", "shape", "position"), o))
                                          for o in p] for p in HELD_PAIR],
    }


# ---------------------------------------------------------------------------
# Model configs
# ---------------------------------------------------------------------------
# Widths differ between the two encoders (diffusers' from_single_file tells CLIP-L from bigG
# by the width); ids as in the real SD-XL configs (eos 2 -> pooling at argmax(input_ids)).
TE1_CONFIG = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
TE2_CONFIG = dict(
    vocab_size=49408, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
    num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
    layer_norm_eps=1e-5, projection_dim=32, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
ADD_TIME_DIM = 16
UNET_CONFIG = dict(
    SDXL_COMMON,
    sample_size=IMAGE_SIZE // 8,
    block_out_channels=[32, 64, 128],
    layers_per_block=1,
    # two blocks per stack at levels 2 and 3 (SD-XL has 2 and 10): AT-EDM prunes after the
    # first block of a stack, so both attention levels (64 and 16 tokens) have blocks to prune
    transformer_layers_per_block=[1, 2, 2],
    attention_head_dim=[1, 2, 4],  # = number of heads (diffusers quirk): head width 32
    norm_num_groups=16,
    cross_attention_dim=TE1_CONFIG["hidden_size"] + TE2_CONFIG["hidden_size"],
    addition_time_embed_dim=ADD_TIME_DIM,
    projection_class_embeddings_input_dim=TE2_CONFIG["projection_dim"] + 6 * ADD_TIME_DIM,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 32, 32],
    layers_per_block=1,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
    scaling_factor=1.0,  # replaced by 1/std of the encoded pool
    force_upcast=True,
)
# Demo model v2 (issue 16): shaped like SD-XL where pruning acts. A 4x VAE gives a 32x32
# latent at 128 px; the UNet keeps SD-XL's level pattern (no attention at the first level,
# transformer depths 2 and 10 at 16x16 = 256 and 8x8 = 64 tokens), so the transformer stacks
# carry most of the FLOPs and AT-EDM's keep ratio for SD-XL's 4.1T FLOPs ratio (1.65x) exists
# (atedm flops at 128 px, 20 steps: full 2.94 GFLOPs/step; AT-EDM with DSAP reaches 1.58x at
# keep 0.3 and at most 2.01x, without DSAP at most 2.36x).
UNET_CONFIG_V2 = dict(
    UNET_CONFIG,
    sample_size=IMAGE_SIZE // 4,
    block_out_channels=[32, 64, 128],
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[1, 2, 4],
)
VAE_CONFIG_V2 = dict(
    VAE_CONFIG,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 64],
    norm_num_groups=16,
)


def use_arch(arch):
    """Selects the model generation: v1 (the first demo model) or v2 (issue 16)."""
    if arch == "v2":
        UNET_CONFIG.clear()
        UNET_CONFIG.update(UNET_CONFIG_V2)
        VAE_CONFIG.clear()
        VAE_CONFIG.update(VAE_CONFIG_V2)


def vae_factor():
    return 2 ** (len(VAE_CONFIG["block_out_channels"]) - 1)


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
TIME_IDS = [IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE]  # orig size, crop, target


@torch.no_grad()
def init_text_encoder_(model, seed):
    """Frozen random text encoder: token embeddings std 1, position embeddings std 0.5,
    linear weights randn/sqrt(fan_in), biases 0, layer norms 1/0 (prompts give clearly
    different hidden states)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("token_embedding.weight"):
            p.copy_(noise)
        elif name.endswith("position_embedding.weight"):
            p.copy_(0.5 * noise)
        elif "norm" in name:
            p.fill_(1.0 if name.endswith(".weight") else 0.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            p.copy_(noise / p.shape[1] ** 0.5)
        p.copy_(p.half().float())  # shipped as f16: train against the f16 values
    model.requires_grad_(False)
    return model.eval()


def build_text_side(tmp_dir):
    vocab_json, merges_txt = clip_vocab_files()
    tok1, tok2 = clip_tokenizers(vocab_json, merges_txt, tmp_dir)
    torch.manual_seed(1)
    te1 = init_text_encoder_(CLIPTextModel(CLIPTextConfig(**TE1_CONFIG)), 101)
    te2 = init_text_encoder_(CLIPTextModelWithProjection(CLIPTextConfig(**TE2_CONFIG)), 102)
    return tok1, tok2, te1, te2, vocab_json, merges_txt


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
class Logger:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, *parts):
        line = time.strftime("%H:%M:%S ") + " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.f.write(line + "\n")


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog))))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def psnr01(a, b):
    """PSNR in dB of [-1,1] images measured on the [0,1] scale."""
    mse = (((a.clamp(-1, 1) - b) / 2) ** 2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def step_gen(seed, step):
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


# ---------------------------------------------------------------------------
# Phase 1: VAE
# ---------------------------------------------------------------------------
def vae_loss(vae, x, kl_weight):
    post = vae.encode(x).latent_dist
    z = post.sample()
    rec = vae.decode(z).sample
    mse = F.mse_loss(rec.float(), x)
    kl = 0.5 * (post.mean.float() ** 2 + post.var.float() - 1.0 - post.logvar.float()).mean()
    return mse + kl_weight * kl, mse, kl


def train_vae(args, log, work):
    ckpt = os.path.join(work, "vae_ckpt.pt")
    final = os.path.join(work, "vae_final.pt")
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    if os.path.exists(final) and args.resume:
        state = torch.load(final)
        vae.load_state_dict(state["vae"])
        log(f"[vae] loaded finished VAE from {final}")
        return vae, state["record"]
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    start, elapsed0 = 0, 0.0
    if args.resume and os.path.exists(ckpt):
        st = torch.load(ckpt)
        vae.load_state_dict(st["vae"])
        opt.load_state_dict(st["opt"])
        start, elapsed0 = st["step"], st["elapsed"]
        log(f"[vae] resumed at step {start}")
    log(f"[vae] {n_params(vae):,} params; {args.vae_steps} steps, batch {args.vae_batch} "
        f"({args.vae_crop}px crops for the first {args.vae_crop_frac:.0%}), lr {args.vae_lr}")
    eval_rng = random.Random(args.seed + 7)
    eval_x = render_batch([random_scene(eval_rng) for _ in range(32)])
    t0 = time.time() - elapsed0
    last_ckpt = time.time()
    ema_mse = None
    vae.train()
    n_crop = int(args.vae_steps * args.vae_crop_frac)
    for step in range(start, args.vae_steps):
        rng = random.Random(args.seed * 7919 + step)
        if step < n_crop:
            scenes = [random_scene(rng) for _ in range(args.vae_batch)]
            x = render_batch(scenes)
            c = args.vae_crop
            ox = [rng.randrange(0, IMAGE_SIZE - c + 1, 8) for _ in scenes]
            oy = [rng.randrange(0, IMAGE_SIZE - c + 1, 8) for _ in scenes]
            x = torch.stack([x[i, :, oy[i]:oy[i] + c, ox[i]:ox[i] + c] for i in range(len(x))])
        else:
            x = render_batch([random_scene(rng) for _ in range(max(1, args.vae_batch // 4))])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 50)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.vae_bf16)):
            loss, mse, kl = vae_loss(vae, x, args.vae_kl)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        ema_mse = mse.item() if ema_mse is None else 0.95 * ema_mse + 0.05 * mse.item()
        if step % 25 == 0 or step == args.vae_steps - 1:
            log(f"[vae] step {step} mse {mse.item():.5f} (avg {ema_mse:.5f}) kl {kl.item():.3f} "
                f"lr {opt.param_groups[0]['lr']:.2e} elapsed {time.time() - t0:.0f}s")
        if time.time() - last_ckpt > args.ckpt_every:
            atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                         "elapsed": time.time() - t0}, ckpt)
            last_ckpt = time.time()
            log(f"[vae] checkpoint at step {step + 1}")
    vae.eval()
    with torch.no_grad():
        rec = vae.decode(vae.encode(eval_x).latent_dist.mode()).sample
    psnr = psnr01(rec, eval_x)
    record = {"steps": args.vae_steps, "wall_s": round(time.time() - t0, 1),
              "final_mse_avg": ema_mse, "eval_psnr_db": round(psnr, 2),
              "eval_note": "PSNR on [0,1] of 32 full 128 px training-distribution images, "
                           "decode(encode(x).mode())"}
    log(f"[vae] done: {record}")
    atomic_save({"vae": vae.state_dict(), "record": record}, final)
    return vae, record


def finetune_decoder(args, log, work, vae):
    """Fine-tune post_quant_conv + decoder with the encoder frozen (the latents, the pool and
    the UNet stay valid): the joint VAE run leaves clear colour shifts (red -> brown,
    green -> yellow-green, magenta -> violet)."""
    final = os.path.join(work, "vae_dec_final.pt")
    if args.resume and os.path.exists(final):
        st = torch.load(final)
        vae.load_state_dict(st["vae"])
        log(f"[dec] loaded fine-tuned decoder from {final}")
        return st["record"]
    if args.vae_dec_steps <= 0:
        return None
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.vae_dec_lr, weight_decay=0.0)
    eval_rng = random.Random(args.seed + 7)
    eval_x = render_batch([random_scene(eval_rng) for _ in range(32)])
    t0 = time.time()
    avg = None
    vae.decoder.train()
    for step in range(args.vae_dec_steps):
        rng = random.Random(args.seed * 104729 + step)
        x = render_batch([random_scene(rng) for _ in range(args.vae_dec_batch)])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=step_gen(args.seed + 5, step))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_dec_steps, args.vae_dec_lr, 20)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        if step % 25 == 0 or step == args.vae_dec_steps - 1:
            log(f"[dec] step {step} mse {loss.item():.5f} (avg {avg:.5f}) "
                f"elapsed {time.time() - t0:.0f}s")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        rec = vae.decode(vae.encode(eval_x).latent_dist.mode()).sample
    record = {"steps": args.vae_dec_steps, "batch": args.vae_dec_batch, "lr": args.vae_dec_lr,
              "wall_s": round(time.time() - t0, 1), "final_mse_avg": avg,
              "eval_psnr_db": round(psnr01(rec, eval_x), 2)}
    log(f"[dec] done: {record}")
    atomic_save({"vae": vae.state_dict(), "record": record}, final)
    return record


# ---------------------------------------------------------------------------
# Phase 2: encoded pool
# ---------------------------------------------------------------------------
@torch.no_grad()
def build_pool(args, log, work, vae, pipe_text):
    path = os.path.join(work, "pool.pt")
    if args.resume and os.path.exists(path):
        log(f"[pool] loaded {path}")
        return torch.load(path)
    t0 = time.time()
    rng = random.Random(args.seed + 3)
    scenes = [(o,) for o in TRAIN_SINGLES] + [random_pair(rng) for _ in range(args.pool_pairs)]
    captions = [caption(s) for s in scenes]
    means, logvars, pes, pps = [], [], [], []
    for i in range(0, len(scenes), 128):
        x = render_batch(scenes[i:i + 128])
        post = vae.encode(x).latent_dist
        means.append(post.mean.clone())
        logvars.append(post.logvar.clone())
        pe, _, pp, _ = pipe_text.encode_prompt(captions[i:i + 128], device="cpu",
                                               num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
        pes.append(pe.half())
        pps.append(pp.clone())
    mean, logvar = torch.cat(means), torch.cat(logvars)
    gen = torch.Generator().manual_seed(args.seed + 4)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
    sf = 1.0 / z.std().item()
    pool = {"mean": mean, "logvar": logvar, "prompt_embeds": torch.cat(pes),
            "pooled": torch.cat(pps), "n_single": len(TRAIN_SINGLES), "captions": captions,
            "scaling_factor": sf,
            "latent_stats": {"mean": z.mean().item(), "std": z.std().item(),
                             "posterior_std_mean": torch.exp(0.5 * logvar).mean().item()}}
    log(f"[pool] {len(scenes)} images ({len(TRAIN_SINGLES)} one-shape) encoded in "
        f"{time.time() - t0:.0f}s; latent stats {pool['latent_stats']}; scaling_factor {sf:.5f}")
    atomic_save(pool, path)
    return pool


# ---------------------------------------------------------------------------
# Phase 3: UNet
# ---------------------------------------------------------------------------
def alphas_cumprod():
    betas = torch.linspace(SCHEDULER_CONFIG["beta_start"] ** 0.5, SCHEDULER_CONFIG["beta_end"] ** 0.5,
                           SCHEDULER_CONFIG["num_train_timesteps"], dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def unet_batch(pool, step, args, acp):
    gen = step_gen(args.seed, step)
    b = args.batch
    n_single, n_all = pool["n_single"], pool["mean"].shape[0]
    single = torch.rand(b, generator=gen) < P_SINGLE
    idx = torch.where(single, torch.randint(0, n_single, (b,), generator=gen),
                      torch.randint(n_single, n_all, (b,), generator=gen))
    sf = pool["scaling_factor"]
    z = pool["mean"][idx] + torch.exp(0.5 * pool["logvar"][idx]) * torch.randn(
        pool["mean"][idx].shape, generator=gen)
    z = z * sf
    t = torch.randint(0, acp.shape[0], (b,), generator=gen)
    noise = torch.randn(z.shape, generator=gen)
    a = acp[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * z + (1 - a).sqrt() * noise
    keep = (torch.rand(b, generator=gen) >= args.cond_drop).float()
    pe = pool["prompt_embeds"][idx].float() * keep.view(-1, 1, 1)
    pp = pool["pooled"][idx] * keep.view(-1, 1)
    snr = acp[t] / (1 - acp[t])
    w = torch.clamp(snr, max=args.min_snr) / snr
    return noisy, t, noise, pe, pp, w


# ---------------------------------------------------------------------------
# The committed training state (--state DIR): what a later machine resumes from
# ---------------------------------------------------------------------------
# Only the repository outlasts a machine, so the state kept there is as small as resuming
# allows: the finished VAE (f32, small), the UNet's EMA weights in f16 (what would ship) and a
# JSON record (step, loss history, wall time, arguments). Everything else is rebuilt
# deterministically: the text encoders from their seeds, the encoded pool from the VAE, each
# batch from (seed, step). Resuming continues from the EMA weights with fresh AdamW moments and a
# short warm-up; that differs from an uninterrupted run, and state.json records each resume.
T_START = time.time()


def state_has_unet(state):
    return os.path.exists(os.path.join(state, "unet_ema.fp16.safetensors"))


def save_state_vae(state, vae, record, dec_record):
    os.makedirs(state, exist_ok=True)
    tmp = os.path.join(state, ".vae.tmp")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp)
    os.replace(tmp, os.path.join(state, "vae.safetensors"))
    meta = read_state_meta(state)
    meta["vae"] = {"record": record, "decoder_finetune": dec_record}
    write_state_meta(state, meta)


def load_state_vae(state):
    path = os.path.join(state, "vae.safetensors")
    if not os.path.exists(path):
        return None
    meta = read_state_meta(state).get("vae", {})
    return load_file(path), meta.get("record"), meta.get("decoder_finetune")


def save_state_unet(state, ema, step, elapsed, hist, args):
    os.makedirs(state, exist_ok=True)
    tmp = os.path.join(state, ".unet.tmp")
    save_file({k: v.detach().half().contiguous() for k, v in ema.state_dict().items()}, tmp)
    os.replace(tmp, os.path.join(state, "unet_ema.fp16.safetensors"))
    meta = read_state_meta(state)
    resumes = meta.get("unet", {}).get("resumes", [])
    meta["unet"] = {"step": step, "elapsed": round(elapsed, 1), "hist": hist,
                    "unet_steps": args.unet_steps, "batch": args.batch, "lr": args.lr,
                    "resumes": resumes}
    write_state_meta(state, meta)


def load_state_unet(state):
    sd = {k: v.float() for k, v in
          load_file(os.path.join(state, "unet_ema.fp16.safetensors")).items()}
    meta = read_state_meta(state)
    meta["unet"]["resumes"] = meta["unet"].get("resumes", []) + [meta["unet"]["step"]]
    write_state_meta(state, meta)
    return sd, meta["unet"]


def read_state_meta(state):
    path = os.path.join(state, "state.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_state_meta(state, meta):
    tmp = os.path.join(state, ".state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(state, "state.json"))


def train_unet(args, log, work, pool):
    ckpt = os.path.join(work, "unet_ckpt.pt")
    torch.manual_seed(args.seed + 11)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            betas=(0.9, 0.99))
    start, elapsed0, hist = 0, 0.0, []
    restart_warmup_from = None
    if args.resume and os.path.exists(ckpt):
        st = torch.load(ckpt)
        unet.load_state_dict(st["unet"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        start, elapsed0, hist = st["step"], st["elapsed"], st["hist"]
        log(f"[unet] resumed at step {start}")
    elif args.state and state_has_unet(args.state):
        # The committed state holds only the EMA weights (f16): training continues from them,
        # with fresh AdamW moments and a short warm-up (see save_state).
        sd, meta = load_state_unet(args.state)
        unet.load_state_dict(sd)
        ema.load_state_dict(sd)
        start, elapsed0, hist = meta["step"], meta["elapsed"], meta["hist"]
        restart_warmup_from = start
        log(f"[unet] resumed from the committed state {args.state} at step {start} "
            f"(EMA weights, fresh optimizer moments)")
    log(f"[unet] {n_params(unet):,} params; {args.unet_steps} steps, batch {args.batch}, "
        f"lr {args.lr}, ema {args.ema}, cond drop {args.cond_drop}, min-SNR {args.min_snr}")
    acp = alphas_cumprod()
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).expand(args.batch, 6)
    unet.train()
    t0 = time.time() - elapsed0
    last_ckpt = time.time()
    run_loss, run_n = 0.0, 0
    for step in range(start, args.unet_steps):
        noisy, t, noise, pe, pp, w = unet_batch(pool, step, args, acp)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.unet_steps, args.lr, args.warmup)
            if restart_warmup_from is not None and step - restart_warmup_from < args.warmup:
                g["lr"] *= (step - restart_warmup_from + 1) / args.warmup
        pred = unet(noisy, t, encoder_hidden_states=pe,
                    added_cond_kwargs={"text_embeds": pp, "time_ids": time_ids}).sample
        per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe_, p in zip(ema.parameters(), unet.parameters()):
                pe_.lerp_(p, 1 - decay)
        run_loss += per.mean().item()
        run_n += 1
        if (step + 1) % args.log_every == 0 or step == args.unet_steps - 1:
            el = time.time() - t0
            hist.append([step + 1, round(run_loss / run_n, 5), round(el, 1)])
            log(f"[unet] step {step + 1} mse {run_loss / run_n:.5f} "
                f"lr {opt.param_groups[0]['lr']:.2e} elapsed {el:.0f}s "
                f"({(step + 1 - start) / max(1e-9, el - elapsed0):.2f} steps/s)")
            run_loss, run_n = 0.0, 0
        if time.time() - last_ckpt > args.ckpt_every and step + 1 < args.unet_steps:
            atomic_save({"unet": unet.state_dict(), "ema": ema.state_dict(),
                         "opt": opt.state_dict(), "step": step + 1,
                         "elapsed": time.time() - t0, "hist": hist}, ckpt)
            if args.state:
                save_state_unet(args.state, ema, step + 1, time.time() - t0, hist, args)
            last_ckpt = time.time()
            log(f"[unet] checkpoint at step {step + 1}")
        if args.stop_after and time.time() - T_START > args.stop_after:
            atomic_save({"unet": unet.state_dict(), "ema": ema.state_dict(),
                         "opt": opt.state_dict(), "step": step + 1,
                         "elapsed": time.time() - t0, "hist": hist}, ckpt)
            if args.state:
                save_state_unet(args.state, ema, step + 1, time.time() - t0, hist, args)
            log(f"[unet] stopping after {args.stop_after:.0f}s at step {step + 1} "
                f"(--stop-after); resume with --resume")
            sys.exit(0)
    wall = time.time() - t0
    atomic_save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "step": args.unet_steps, "elapsed": wall, "hist": hist}, ckpt)
    if args.state:
        save_state_unet(args.state, ema, args.unet_steps, wall, hist, args)
    record = {"steps": args.unet_steps, "wall_s": round(wall, 1),
              "final_mse_unweighted": hist[-1][1] if hist else None,
              "loss_history_step_mse_elapsed_s": hist}
    log(f"[unet] done in {wall:.0f}s, last mse {record['final_mse_unweighted']}")
    return ema.eval(), record


# ---------------------------------------------------------------------------
# Phase 4: save, reload, samples, adherence check
# ---------------------------------------------------------------------------
def save_pipeline(out, tok1, tok2, te1, te2, unet, vae, vocab_json, merges_txt):
    if os.path.exists(out):
        shutil.rmtree(out)
    sched = EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    half = StableDiffusionXLPipeline(
        vae=copy.deepcopy(vae).half(), text_encoder=copy.deepcopy(te1).half(),
        text_encoder_2=copy.deepcopy(te2).half(), tokenizer=tok1, tokenizer_2=tok2,
        unet=copy.deepcopy(unet).half(), scheduler=sched, add_watermarker=False)
    half.register_to_config(force_zeros_for_empty_prompt=True)
    half.save_pretrained(out, safe_serialization=True, variant="fp16")
    # transformers >= 5.6 writes CLIPTextModel without the text_model. level; the real
    # SD-XL layout (and atedm's loader) has it (as make_pipeline_fixtures.py does)
    te1_file = os.path.join(out, "text_encoder", "model.fp16.safetensors")
    sd = load_file(te1_file)
    if not all(k.startswith("text_model.") for k in sd):
        save_file({"text_model." + k: v for k, v in sorted(sd.items())}, te1_file,
                  metadata={"format": "pt"})
    for name, tok in (("tokenizer", tok1), ("tokenizer_2", tok2)):
        write_tokenizer_folder(tok, os.path.join(out, name), vocab_json, merges_txt)
    expected = {"text_encoder": "model.fp16.safetensors",
                "text_encoder_2": "model.fp16.safetensors",
                "unet": "diffusion_pytorch_model.fp16.safetensors",
                "vae": "diffusion_pytorch_model.fp16.safetensors"}
    for sub, fn in expected.items():
        files = sorted(f for f in os.listdir(os.path.join(out, sub)) if f.endswith(".safetensors"))
        assert files == [fn], (sub, files)
        assert all(v.dtype == torch.float16 for v in load_file(os.path.join(out, sub, fn)).values())


def grid_image(rows, captions, path):
    """rows: list of lists of [3,H,W] tensors in [0,1]; caption index drawn at the left."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    pad, lab = 4, 28
    W = lab + n_cols * (IMAGE_SIZE + pad) + pad
    H = n_rows * (IMAGE_SIZE + pad) + pad
    canvas = Image.new("RGB", (W, H), (90, 90, 90))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (IMAGE_SIZE + pad)
        draw.text((4, y + IMAGE_SIZE // 2 - 6), f"{r + 1}", fill=(255, 255, 255))
        for c, img in enumerate(row):
            arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(arr), (lab + pad + c * (IMAGE_SIZE + pad), y))
    canvas.save(path)


def detect(img01):
    """Very simple adherence detector for a [3,H,W] image in [0,1]: per palette colour, the
    pixels that are saturated and bright and nearest in hue; returns {colour: (cell, count)}
    for colours with >= 20 pixels, cell = the grid cell holding most of them."""
    x = img01.clamp(0, 1)
    mx, _ = x.max(0)
    mn, _ = x.min(0)
    sat = (mx - mn) / mx.clamp(min=1e-6)
    r, g, b = x
    hue = torch.rad2deg(torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360
    valid = (mx > 0.4) & (sat > 0.5)
    out = {}
    for name, h in HUES.items():
        dh = ((hue - h + 180) % 360 - 180).abs()
        m = valid & (dh < 30)
        n = int(m.sum())
        if n >= 20:
            ys, xs = torch.nonzero(m, as_tuple=True)
            cols = (xs.float() * 3 / IMAGE_SIZE).long().clamp(0, 2)
            rows = (ys.float() * 3 / IMAGE_SIZE).long().clamp(0, 2)
            cell = torch.bincount(rows * 3 + cols, minlength=9).argmax().item()
            out[name] = ([cell % 3, cell // 3], n)
    return out


def adherence(objs, det):
    colour_ok = all(o[1] in det for o in objs)
    pos_ok = all(o[1] in det and det[o[1]][0] == CELLS[o[3]] for o in objs)
    extra = [c for c in det if c not in {o[1] for o in objs}]
    return colour_ok, pos_ok, not extra


@torch.no_grad()
def sample_and_check(out, args, log):
    pipe = StableDiffusionXLPipeline.from_pretrained(
        out, variant="fp16", torch_dtype=torch.float32, local_files_only=True,
        add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor == VAE_CONFIG["scaling_factor"]
    kw = dict(height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=args.sample_steps,
              guidance_scale=args.guidance, output_type="pt")

    def gen(prompts, seeds):
        g = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(prompt=prompts, generator=g, **kw).images

    # grid: ground truth + 4 seeds for 6 one-shape and 6 two-shape held-back captions
    pick = [(o,) for o in HELD_SINGLE[::8]] + [p for p in HELD_PAIR[::8]]
    rows, caps = [], []
    t0 = time.time()
    for objs in pick:
        cap = caption(objs)
        imgs = gen([cap] * 4, [1000 + k for k in range(4)])
        rows.append([(render(objs) + 1) / 2] + list(imgs))
        caps.append(cap)
    grid_image(rows, caps, args.samples)
    txt = os.path.splitext(args.samples)[0] + ".txt"
    with open(txt, "w") as f:
        f.write(f"{args.samples}: held-back captions (never seen in training). Column 1 = the "
                f"exact rendering of the caption, columns 2-5 = samples with seeds 1000-1003; "
                f"diffusers StableDiffusionXLPipeline from {out} (fp16 variant loaded as f32), "
                f"EulerDiscreteScheduler, {args.sample_steps} steps, guidance "
                f"{args.guidance}, {IMAGE_SIZE}x{IMAGE_SIZE}, empty negative prompt.\n")
        for i, c in enumerate(caps):
            f.write(f"{i + 1}: {c}\n")
    log(f"[samples] grid {args.samples} ({time.time() - t0:.0f}s), captions in {txt}")

    # adherence on every held-back caption, one seed each
    res = {}
    for kind, sets in (("one_shape", [(o,) for o in HELD_SINGLE]), ("two_shapes", HELD_PAIR)):
        ok = np.zeros(3)
        for i in range(0, len(sets), 16):
            chunk = sets[i:i + 16]
            imgs = gen([caption(s) for s in chunk], [2000 + i + k for k in range(len(chunk))])
            for objs, img in zip(chunk, imgs):
                ok += np.array(adherence(objs, detect(img)), dtype=float)
        res[kind] = {"n": len(sets), "colours_present": ok[0] / len(sets),
                     "colours_in_right_cell": ok[1] / len(sets),
                     "no_extra_colours": ok[2] / len(sets)}
    res["note"] = ("train_demo.py's simple hue detector (saturation > 0.5, value > 0.4, hue "
                   "within 30 degrees, >= 20 px, cell = grid cell holding most such pixels); "
                   f"one image per held-back caption, seeds 2000+, {args.sample_steps} Euler "
                   f"steps, guidance {args.guidance}")
    log(f"[eval] {res}")
    return res


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
def dir_files(path):
    rows = []
    for dp, _, fns in sorted(os.walk(path)):
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            rows.append((os.path.relpath(p, path), os.path.getsize(p)))
    return rows


def probe(args, log, pipe_text):
    """Time a few VAE and UNet steps with the configured sizes (no training state kept)."""
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    rng = random.Random(0)
    for crop, bs in ((args.vae_crop, args.vae_batch), (IMAGE_SIZE, max(1, args.vae_batch // 4))):
        ts = []
        for i in range(4):
            x = render_batch([random_scene(rng) for _ in range(bs)])[:, :, :crop, :crop]
            t = time.time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.vae_bf16)):
                loss = vae_loss(vae, x, args.vae_kl)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            ts.append(time.time() - t)
        log(f"[probe] vae {crop}px batch {bs}: {np.median(ts[1:]):.3f} s/step")
    unet = UNet2DConditionModel(**UNET_CONFIG)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    b = args.batch
    x = torch.randn(b, 4, IMAGE_SIZE // vae_factor(), IMAGE_SIZE // vae_factor())
    pe = torch.randn(b, 77, UNET_CONFIG["cross_attention_dim"])
    pp = torch.randn(b, TE2_CONFIG["projection_dim"])
    tid = torch.tensor([TIME_IDS], dtype=torch.float32).expand(b, 6)
    ts = []
    for i in range(4):
        t = time.time()
        out = unet(x, torch.randint(0, 1000, (b,)), encoder_hidden_states=pe,
                   added_cond_kwargs={"text_embeds": pp, "time_ids": tid}).sample
        loss = (out ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ts.append(time.time() - t)
    log(f"[probe] unet {n_params(unet):,} params, batch {b}: {np.median(ts[1:]):.3f} s/step")
    t = time.time()
    with torch.no_grad():
        x = render_batch([random_scene(rng) for _ in range(128)])
        t1 = time.time()
        vae.encode(x)
        t2 = time.time()
        pipe_text.encode_prompt([caption(random_scene(rng)) for _ in range(128)], device="cpu",
                                num_images_per_prompt=1, do_classifier_free_guidance=False)
    log(f"[probe] 128 images: render {t1 - t:.2f}s, vae encode {t2 - t1:.2f}s, "
        f"text encode {time.time() - t2:.2f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="pipeline folder to write (replaced)")
    ap.add_argument("--work", help="log/checkpoint/pool folder (default <out>-work)")
    ap.add_argument("--samples", help="sample grid PNG (default <out>-samples.png)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--probe", action="store_true", help="only time a few steps")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vae-steps", type=int, default=450)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-crop", type=int, default=64)
    ap.add_argument("--vae-crop-frac", type=float, default=0.8)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-5)
    ap.add_argument("--vae-bf16", type=int, default=0)
    ap.add_argument("--vae-dec-steps", type=int, default=200)
    ap.add_argument("--vae-dec-batch", type=int, default=8)
    ap.add_argument("--vae-dec-lr", type=float, default=5e-4)
    ap.add_argument("--pool-pairs", type=int, default=6000)
    ap.add_argument("--unet-steps", type=int, default=1900)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-every", type=float, default=600.0, help="seconds")
    ap.add_argument("--note", default="", help="free text stored in atedm_demo.json")
    ap.add_argument("--arch", choices=["v1", "v2"], default="v1",
                    help="model generation: v1 (8x VAE, depths 1/2/2) or v2 (4x VAE, depths "
                         "-/2/10, shaped like SD-XL)")
    ap.add_argument("--state", help="small resumable training state to keep in the repository "
                                    "(VAE, UNet EMA f16, state.json); resumed from when the "
                                    "work folder has no checkpoint")
    ap.add_argument("--stop-after", type=float, default=0.0,
                    help="seconds: save the state and stop the UNet phase after this long")
    args = ap.parse_args()
    use_arch(args.arch)
    args.state = os.path.abspath(args.state) if args.state else None
    args.out = os.path.abspath(args.out)
    work = os.path.abspath(args.work or args.out + "-work")
    args.samples = os.path.abspath(args.samples or args.out + "-samples.png")
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # (also set by the make_unet_fixtures import)
    log = Logger(os.path.join(work, "train.log"))
    t_start = time.time()
    log(f"=== train_demo.py {' '.join(sys.argv[1:])}")
    log(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers "
        f"{transformers.__version__}, threads {torch.get_num_threads()}")

    tok1, tok2, te1, te2, vocab_json, merges_txt = build_text_side(os.path.join(work, "_tok"))
    pipe_text = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**VAE_CONFIG), text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
        tokenizer_2=tok2, unet=None, scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        add_watermarker=False)
    if args.probe:
        probe(args, log, pipe_text)
        return

    from_state = load_state_vae(args.state) if args.state else None
    if from_state is not None and not (args.resume and os.path.exists(
            os.path.join(work, "vae_dec_final.pt"))):
        vae = AutoencoderKL(**VAE_CONFIG)
        vae.load_state_dict(from_state[0])
        vae_rec, dec_rec = from_state[1], from_state[2]
        log(f"[vae] loaded the finished VAE from the committed state {args.state}")
        vae.eval().requires_grad_(False)
        pool = build_pool(args, log, work, vae, pipe_text)
    else:
        vae, vae_rec = train_vae(args, log, work)
        vae.eval().requires_grad_(False)
        pool = build_pool(args, log, work, vae, pipe_text)
        dec_rec = finetune_decoder(args, log, work, vae)
        if args.state:
            save_state_vae(args.state, vae, vae_rec, dec_rec)
    VAE_CONFIG["scaling_factor"] = round(pool["scaling_factor"], 5)
    unet, unet_rec = train_unet(args, log, work, pool)

    # the trained VAE with the measured scaling_factor in its config
    vae_out = AutoencoderKL(**VAE_CONFIG)
    vae_out.load_state_dict(vae.state_dict())
    save_pipeline(args.out, tok1, tok2, te1, te2, unet, vae_out.eval(), vocab_json, merges_txt)
    log(f"[save] pipeline written to {args.out}")

    spec = dataset_spec()
    spec["model"] = {
        "layout": "diffusers StableDiffusionXLPipeline folder, fp16 variant files "
                  "(load with variant='fp16')",
        "text_encoders": "frozen at their seeded random initialisation (never trained)",
        "params": {"text_encoder": n_params(te1), "text_encoder_2": n_params(te2),
                   "unet": n_params(unet), "vae": n_params(vae)},
        "vae_scaling_factor": VAE_CONFIG["scaling_factor"],
        "add_time_ids": TIME_IDS,
        "unet_config": {k: v for k, v in UNET_CONFIG.items()},
        "vae_config": {k: v for k, v in VAE_CONFIG.items()},
        "text_encoder_config": TE1_CONFIG,
        "text_encoder_2_config": TE2_CONFIG,
    }
    spec["training"] = {
        "command": "python3 tools/train_demo.py " + " ".join(sys.argv[1:]),
        "hyperparameters": {k: v for k, v in vars(args).items()
                            if k not in ("out", "work", "samples", "resume", "probe", "note")},
        "unet_objective": "epsilon prediction, DDPM scaled_linear betas 0.00085..0.012, 1000 "
                          "train timesteps, t uniform; loss = mse * min(SNR, min_snr)/SNR; "
                          "AdamW(0.9, 0.99), linear warm-up then cosine to 5% of lr, grad clip "
                          "1; EMA weights saved; caption dropout with all-zero prompt_embeds and "
                          "pooled text_embeds",
        "vae_objective": "mse + vae_kl * mean KL, AdamW, warm-up 50 + cosine; 64 px crops "
                         "(batch vae_batch) then full 128 px images (batch vae_batch/4)",
        "pool": {"one_shape_images": pool["n_single"],
                 "two_shape_images": len(pool["captions"]) - pool["n_single"],
                 "latent_stats": pool["latent_stats"]},
        "vae": vae_rec,
        "vae_decoder_finetune": dec_rec,
        "unet": unet_rec,
        "host": f"{os.cpu_count()} CPU cores, torch threads {args.threads}",
        "note": args.note,
    }
    spec_path = os.path.join(args.out, "atedm_demo.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")

    res = sample_and_check(args.out, args, log)
    spec["training"]["held_back_eval_python"] = res
    spec["training"]["total_wall_s"] = round(time.time() - t_start, 1)
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")
    total = 0
    for rel, size in dir_files(args.out):
        log(f"  {rel}: {size:,}")
        if rel.endswith(".safetensors"):
            total += size
    log(f"[done] weights total {total:,} bytes ({total / 2**20:.2f} MiB); folder "
        f"{sum(s for _, s in dir_files(args.out)):,} bytes; wall {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
