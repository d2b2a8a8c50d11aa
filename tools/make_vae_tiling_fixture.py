"""Reference for the VAE's tiled decode: diffusers' AutoencoderKL.tiled_decode on the tiny
pipeline fixture's VAE with small tiles (4 latents = 32 px, overlap factor 0.25).

Run after tools/make_pipeline_fixtures.py: `python3 tools/make_vae_tiling_fixture.py`
(re-executes itself in tools/.venv). Writes tests/fixtures/pipeline/vae_tiled.safetensors.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import venv_bootstrap  # noqa: E402

venv_bootstrap.ensure(__file__)
ROOT = os.path.dirname(venv_bootstrap.HERE)

import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
vae = AutoencoderKL.from_pretrained(os.path.join(ROOT, "tests/fixtures/pipeline/sdxl-tiny/vae"), variant="fp16", torch_dtype=torch.float32, local_files_only=True).eval()
latents = torch.randn(1, 4, 12, 16) * 4.0  # as the denoiser leaves them (before / scaling_factor)
z = latents / vae.config.scaling_factor
with torch.no_grad():
    whole = vae.decode(z).sample
    vae.enable_tiling()
    vae.tile_latent_min_size = 4
    vae.tile_sample_min_size = 32
    vae.tile_overlap_factor = 0.25
    tiled = vae.decode(z).sample
print("whole vs tiled max diff", (whole - tiled).abs().max().item(), "std", tiled.std().item())
save_file({"latents": latents.contiguous(), "image_tiled": tiled.contiguous(), "image_whole": whole.contiguous()},
          os.path.join(ROOT, "tests/fixtures/pipeline/vae_tiled.safetensors"))
