#!/usr/bin/env python3
"""Fixtures for the demo model's tests (tests/pipeline/demo.rs), written to tests/fixtures/demo/:

- truth_NN.png + truth.json: images drawn by the training data renderer of tools/train_demo.py
  (ground truth for the Rust adherence detector) with their captions, covering every colour,
  shape, size and position;
- reference.safetensors + reference.json: diffusers' StableDiffusionXLPipeline on the shipped
  demo model (assets/demo, fp16 weights run in f32) from fixed initial latents: prompt
  embeddings, final latents and the decoded image, for the engine-vs-diffusers test.

Usage: python3 tools/make_demo_fixtures.py [--model assets/demo]
(the system python3 creates/uses tools/.venv, pinned by tools/requirements.txt).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import venv_bootstrap  # noqa: E402

venv_bootstrap.ensure(__file__)

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import train_demo as td  # noqa: E402  (the dataset definition and renderer)
from diffusers import StableDiffusionXLPipeline  # noqa: E402

ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "tests", "fixtures", "demo")

# The reference run: a one-shape held-back caption, few steps (the engine test runs it too).
REF_STEPS = 8
REF_GUIDANCE = 5.0
REF_SEED = 11


def truth_scenes():
    """Every colour, shape, size and position at least once, one- and two-shape scenes."""
    rng = random.Random(20261129)
    scenes = []
    colours, shapes = list(td.PALETTE), td.SHAPES
    sizes, positions = list(td.SIZES), list(td.POSITIONS)
    for i in range(18):
        scenes.append(((sizes[i % 2], colours[i % 6], shapes[i % 3], positions[i % 9]),))
    while len(scenes) < 36:
        scenes.append(td.random_pair(rng))
    return scenes


def write_truth():
    scenes = truth_scenes()
    caps = []
    for i, s in enumerate(scenes):
        img = ((td.render(s) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(OUT, f"truth_{i:02d}.png"))
        caps.append(td.caption(s))
    with open(os.path.join(OUT, "truth.json"), "w") as f:
        json.dump({"note": "tools/make_demo_fixtures.py: images drawn by train_demo.render",
                   "captions": caps}, f, indent=1)


@torch.no_grad()
def write_reference(model):
    pipe = StableDiffusionXLPipeline.from_pretrained(model, variant="fp16",
                                                     torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    spec = json.load(open(os.path.join(model, "atedm_demo.json")))
    prompt = spec["held_back_one_shape"][0]
    size = spec["image_size"]
    gen = torch.Generator().manual_seed(REF_SEED)
    latents = torch.randn((1, 4, size // 8, size // 8), generator=gen)
    cap = {}
    orig = pipe.encode_prompt

    def encode_prompt(*a, **k):
        r = orig(*a, **k)
        cap["encode"] = [x.clone() for x in r]
        return r

    pipe.encode_prompt = encode_prompt
    common = dict(prompt=prompt, height=size, width=size, num_inference_steps=REF_STEPS,
                  guidance_scale=REF_GUIDANCE, latents=latents.clone())
    final = pipe(**common, output_type="latent", return_dict=False)[0]
    del pipe.encode_prompt
    image = pipe.vae.decode(final / pipe.vae.config.scaling_factor, return_dict=False)[0]
    pe, npe, ppe, nppe = cap["encode"]
    assert not npe.any() and not nppe.any(), "empty negative prompt must give zeros"
    save_file({
        "latents": latents.contiguous(),
        "prompt_embeds": pe.contiguous(),
        "negative_prompt_embeds": npe.contiguous(),
        "pooled_prompt_embeds": ppe.contiguous(),
        "negative_pooled_prompt_embeds": nppe.contiguous(),
        "latents_final": final.contiguous(),
        "image": image.contiguous(),
    }, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"prompt": prompt, "negative_prompt": None, "steps": REF_STEPS,
                   "guidance": REF_GUIDANCE, "width": size, "height": size,
                   "latents_seed": REF_SEED,
                   "versions": {"torch": torch.__version__,
                                "diffusers": __import__("diffusers").__version__,
                                "transformers": __import__("transformers").__version__}},
                  f, indent=1)
    img = ((image[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(os.path.join(OUT, "reference.png"))
    print(f"reference: {prompt!r}, image range {image.min():.3f}..{image.max():.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "assets", "demo"))
    a = ap.parse_args()
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    write_truth()
    write_reference(a.model)


if __name__ == "__main__":
    main()
