#!/usr/bin/env python3
"""Tiny random SD-XL text encoder pairs (`text_encoder/` = CLIPTextModel, `text_encoder_2/` =
CLIPTextModelWithProjection) saved by each transformers version whose `save_pretrained` writes a
distinct layout, with that version's reference outputs, for atedm's tests/clip_layouts.rs.

Usage (from anywhere):   python3 tools/make_clip_layout_fixtures.py

Pinned versions (Python 3.11; see also tests/fixtures/clip_layouts/README.md):
  - torch 2.15.0, safetensors 0.8.0, numpy 2.4.6 for every writer (from tools/.venv, which
    tools/requirements.txt pins: transformers 5.24.0, huggingface_hub 2.4.0, tokenizers 0.23.3)
  - writer "transformers-4.57.6": transformers 4.57.6, huggingface_hub 0.36.2, tokenizers 0.22.2
    (layout of 4.x and 5.0-5.5: both models under `text_model.`)
  - writer "transformers-5.25.0": transformers 5.25.0, huggingface_hub 2.4.0, tokenizers 0.23.3
    (layout of 5.6-5.25: CLIPTextModel flat, CLIPTextModelWithProjection under `text_model.`)

With the system python3 the script creates tools/.venv when it is missing (python3 -m venv +
pip install -r tools/requirements.txt) and re-executes itself inside it. Each writer version
gets its own small venv, tools/.venv/writers/transformers-<version> (inside the ignored
tools/.venv): it holds only transformers and its hub/tokenizers pins and sees torch, numpy and
safetensors of tools/.venv through a .pth file, so every writer runs the same torch. The script
then runs itself there with `--write <writer>`, and finally checks every fixture with every
writer's and the pinned version's `from_pretrained` (`--check`). Everything is built from
configs: nothing is downloaded from the Hugging Face hub. The run is deterministic: weights come
from a seeded generator in a version-independent order, so a rerun writes the same bytes.
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_ROOT = os.path.join(ROOT, "tests", "fixtures", "clip_layouts")

# writer name -> (pip pins of its venv, seed, expected key prefix of text_encoder's and
# text_encoder_2's text tower in the saved model.safetensors)
WRITERS = {
    "transformers-4.57.6": (
        ["transformers==4.57.6", "huggingface_hub==0.36.2", "tokenizers==0.22.2"],
        1571, ("text_model.", "text_model.")),
    "transformers-5.25.0": (
        ["transformers==5.25.0", "huggingface_hub==2.4.0", "tokenizers==0.23.3"],
        2552, ("", "text_model.")),
}
PINNED = "5.24.0"  # tools/requirements.txt

sys.path.insert(0, HERE)
import venv_bootstrap  # noqa: E402

WRITERS_DIR = os.path.join(venv_bootstrap.VENV, "writers")
# In a writer venv (`--write`, `--check`) stay there; otherwise go to tools/.venv.
if not os.path.realpath(sys.prefix).startswith(os.path.realpath(WRITERS_DIR) + os.sep):
    venv_bootstrap.ensure(__file__)
for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(key, "1")

# ---------------------------------------------------------------------------
# Inside tools/.venv or a writer venv from here on.
# ---------------------------------------------------------------------------

import json  # noqa: E402
import shutil  # noqa: E402
import site  # noqa: E402
import struct  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

VOCAB = 256
BOS, EOS = VOCAB - 2, VOCAB - 1  # as in CLIP's vocabulary: the two highest ids
# SD-XL's configs: eos_token_id 2 selects transformers' legacy pooling (argmax of the ids, i.e.
# the first EOS since EOS is the highest id), which is what atedm implements.
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=77, num_hidden_layers=2,
              layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
CONFIGS = {
    # CLIP-L-like: quick_gelu; projection_dim is written but CLIPTextModel has no projection.
    "text_encoder": (CLIPTextModel, dict(COMMON, hidden_size=16, intermediate_size=32,
                                         num_attention_heads=2, hidden_act="quick_gelu",
                                         projection_dim=16)),
    # OpenCLIP-bigG-like: gelu, projection to a width other than hidden_size (12 x 20).
    "text_encoder_2": (CLIPTextModelWithProjection,
                       dict(COMMON, hidden_size=20, intermediate_size=40, num_attention_heads=2,
                            hidden_act="gelu", projection_dim=12)),
}
# Token ids: batch "a" [3, 8] (CLIP-L-style EOS padding, bigG-style "!" = 0 padding, an empty
# prompt), batch "b" [1, 77] (every position, as SD-XL runs it).
IDS = {
    "a": [[BOS, 10, 20, 30, EOS, EOS, EOS, EOS],
          [BOS, 7, 100, 200, 3, EOS, 0, 0],
          [BOS, EOS, 0, 0, 0, 0, 0, 0]],
    "b": [[BOS] + [(i * 37 + 11) % (VOCAB - 2) for i in range(60)] + [EOS] * 16],
}


def flat(name):
    return name[len("text_model."):] if name.startswith("text_model.") else name


def fill_(model, seed):
    """Overwrites every parameter from one seeded generator, in the order of the sorted names
    without `text_model.` (so every version gets the same values): matrices N(0, 1/fan_in),
    the token embedding N(0, 1), position embedding N(0, 0.25), norm scales 1 + 0.1 N, biases
    0.1 N. Non-trivial norms and biases make a wrongly loaded one show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params, key=flat):
            p = params[name]
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("token_embedding.weight"):
                v = r
            elif name.endswith("position_embedding.weight"):
                v = 0.5 * r
            elif p.dim() == 2:
                v = r / p.shape[1] ** 0.5
            elif "norm" in name and name.endswith("weight"):
                v = 1 + 0.1 * r
            else:
                v = 0.1 * r
            p.copy_(v)


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


@torch.no_grad()
def outputs(model, with_projection):
    out = {}
    for batch, ids in IDS.items():
        ids = torch.tensor(ids, dtype=torch.int64)
        o = model(input_ids=ids, output_hidden_states=True)
        out[f"{batch}.last_hidden_state"] = o.last_hidden_state
        # SD-XL's hidden_states[-2]: the output of the penultimate layer, before the final norm.
        out[f"{batch}.penultimate"] = o.hidden_states[-2]
        if with_projection:
            out[f"{batch}.text_embeds"] = o.text_embeds
        else:
            out[f"{batch}.pooler_output"] = o.pooler_output
    return out


def write(writer):
    """Inside the writer's venv: builds, saves, reloads and records one fixture."""
    _, seed, prefixes = WRITERS[writer]
    assert writer == f"transformers-{transformers.__version__}", (writer, transformers.__version__)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out_dir = os.path.join(OUT_ROOT, writer)
    shutil.rmtree(out_dir, ignore_errors=True)
    refs = {}
    for (sub, (cls, cfg)), prefix, sub_seed in zip(CONFIGS.items(), prefixes, (seed, seed + 1)):
        model = cls(CLIPTextConfig(**cfg)).eval()
        fill_(model, sub_seed)
        d = os.path.join(out_dir, sub)
        model.save_pretrained(d)
        files = sorted(os.listdir(d))
        assert files == ["config.json", "model.safetensors"], files
        # The layout this version writes: the text tower under `prefix`, the projection at the
        # top, no position_ids buffer.
        keys = sorted(st_header(os.path.join(d, "model.safetensors")))
        want = sorted(prefix + flat(k) for k in model.state_dict()
                      if not k.startswith("text_projection.") and "position_ids" not in k)
        if cls is CLIPTextModelWithProjection:
            want = sorted(want + ["text_projection.weight"])
        assert keys == want, (sub, keys[:4], want[:4])
        # The writer's own from_pretrained takes it back completely and gives the same outputs.
        back, info = cls.from_pretrained(d, output_loading_info=True)
        back.eval()
        assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        ref = outputs(model, cls is CLIPTextModelWithProjection)
        for k, v in outputs(back, cls is CLIPTextModelWithProjection).items():
            assert torch.equal(v, ref[k]), k
        for k, v in ref.items():
            refs[f"{sub}.{k}"] = v.contiguous()
        print(f"{writer}: {sub}: {len(keys)} tensors, first {keys[0]!r}, "
              f"{os.path.getsize(os.path.join(d, 'model.safetensors'))} bytes")
    for batch, ids in IDS.items():
        refs[f"{batch}.input_ids"] = torch.tensor(ids, dtype=torch.int64)
    save_file(refs, os.path.join(out_dir, "reference.safetensors"),
              # One metadata entry: safetensors writes several in a random order.
              metadata={"fixture": json.dumps({
                  "transformers": transformers.__version__, "torch": torch.__version__,
                  "text_encoder_prefix": prefixes[0], "text_encoder_2_prefix": prefixes[1]},
                  sort_keys=True)})


def check():
    """Loads every fixture with this version's from_pretrained: what it accepts."""
    from safetensors.torch import load_file
    torch.manual_seed(0)  # the weights a version leaves missing are random
    torch.set_num_threads(1)
    for writer in WRITERS:
        refs = load_file(os.path.join(OUT_ROOT, writer, "reference.safetensors"))
        for sub, (cls, _) in CONFIGS.items():
            m, info = cls.from_pretrained(os.path.join(OUT_ROOT, writer, sub),
                                          output_loading_info=True)
            m.eval()
            miss, unex = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
            err = max(((v - refs[f"{sub}.{k}"]).abs().max().item()
                       for k, v in outputs(m, cls is CLIPTextModelWithProjection).items()))
            verdict = "OK" if not miss and not unex and err <= 1e-6 else "REFUSED/WRONG"
            print(f"  transformers {transformers.__version__} from_pretrained({writer}/{sub}): "
                  f"missing {len(miss)} {miss[:1]}, unexpected {len(unex)} {unex[:1]}, "
                  f"max|out - ref| {err:.3g}: {verdict}")


def writer_python(writer):
    """The writer's venv (created on first use), sharing tools/.venv's torch."""
    pins = WRITERS[writer][0]
    venv = os.path.join(WRITERS_DIR, writer)
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        print(f"[{writer}] creating {venv}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        subprocess.check_call([py, "-m", "pip", "install", "-q"] + pins)
        own = subprocess.check_output(
            [py, "-c", "import site; print(site.getsitepackages()[0])"], text=True).strip()
        # Appended after the venv's own site-packages: its transformers wins, torch comes from
        # tools/.venv.
        with open(os.path.join(own, "zz_tools_venv.pth"), "w") as f:
            f.write(site.getsitepackages()[0] + "\n")
    return py


def main():
    if sys.argv[1:2] == ["--write"]:
        return write(sys.argv[2])
    if sys.argv[1:2] == ["--check"]:
        return check()
    assert transformers.__version__ == PINNED, transformers.__version__
    env = dict(os.environ, PYTHONHASHSEED="0")
    pythons = {w: writer_python(w) for w in WRITERS}
    for writer, py in pythons.items():
        subprocess.check_call([py, os.path.abspath(__file__), "--write", writer], env=env)
    print("what each version's from_pretrained accepts:")
    for py in pythons.values():
        subprocess.check_call([py, os.path.abspath(__file__), "--check"], env=env)
    check()
    total = 0
    for dirpath, _, files in os.walk(OUT_ROOT):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files
                     if f != "README.md")
    print(f"total size of {os.path.relpath(OUT_ROOT, ROOT)}: {total:,} bytes")


if __name__ == "__main__":
    main()
