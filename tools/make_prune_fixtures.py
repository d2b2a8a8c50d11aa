#!/usr/bin/env python3
"""Reference tensors for atedm's AT-EDM token pruning (spec: docs atedm.md), computed with
tools/atedm_reference.py on top of Hugging Face diffusers.

Usage (from anywhere):   python3 tools/make_prune_fixtures.py

Same bootstrap as make_unet_fixtures.py (tools/.venv, pinned tools/requirements.txt).
Loads the committed tiny UNets tests/fixtures/unet/{tiny-a,tiny-b}/unet and their
inputs.safetensors (nothing from the hub) and writes tests/fixtures/prune/<model>_<case>.
{safetensors,json} (see tests/fixtures/README.md).  Deterministic: a rerun writes the same bytes.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UNET_ROOT = os.path.join(ROOT, "tests", "fixtures", "unet")
OUT_ROOT = os.path.join(ROOT, "tests", "fixtures", "prune")

sys.path.insert(0, HERE)
import venv_bootstrap  # noqa: E402

venv_bootstrap.ensure(__file__)

# ---------------------------------------------------------------------------
# Inside the venv from here on.
# ---------------------------------------------------------------------------

import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

import atedm_reference as ar  # noqa: E402

warnings.filterwarnings("ignore")
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()

torch.set_num_threads(1)  # same reduction order on every machine/run
torch.use_deterministic_algorithms(True)

MODELS = ["tiny-a", "tiny-b"]

# (case name, PruneConfig kwargs, store per-stack input/output hidden states)
CASES = [
    ("k050_t5_p0", dict(keep_ratio=0.5, T=5, p=0), True),
    ("k025_t1_p0", dict(keep_ratio=0.25, T=1, p=0), False),
    ("k070_t5_p1", dict(keep_ratio=0.7, T=5, p=1), True),
    ("dsap_early", dict(keep_ratio=0.5, T=5, p=0, dsap=True, tau=0.25, step=0, steps=8), False),
    ("dsap_late", dict(keep_ratio=0.5, T=5, p=0, dsap=True, tau=0.25, step=6, steps=8), False),
    ("dagger_k050", dict(keep_ratio=0.5, T=5, p=0, dagger=True), False),
]


def load(name):
    unet = UNet2DConditionModel.from_pretrained(
        os.path.join(UNET_ROOT, name), subfolder="unet", local_files_only=True,
        torch_dtype=torch.float32)
    unet.eval()
    inp = load_file(os.path.join(UNET_ROOT, name, "inputs.safetensors"))
    ref = load_file(os.path.join(UNET_ROOT, name, "outputs.safetensors"))["out"]
    return unet, inp, ref


@torch.no_grad()
def forward(model, inp):
    return model(
        inp["sample"],
        inp["timestep"],
        encoder_hidden_states=inp["encoder_hidden_states"],
        added_cond_kwargs={"text_embeds": inp["text_embeds"], "time_ids": inp["time_ids"]},
        return_dict=False,
    )[0].contiguous()


def rel_max(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def sanity(name, unet, inp, out0, lines):
    """keep_ratio 1.0 must reproduce the unpruned diffusers output; the explicit map must
    match diffusers' own attention probabilities; recovery must copy rows exactly."""
    for p in (0, 1):
        cfg = ar.PruneConfig(keep_ratio=1.0, T=5, p=p)
        with ar.patch_unet(unet, cfg) as rec:
            o = forward(unet, inp)
        for sname, r in rec.stacks.items():
            assert torch.equal(r["kept"], torch.arange(r["N"]).expand(o.shape[0], -1)), sname
            assert torch.allclose(r["score"].double().sum(1),
                                  torch.ones(o.shape[0], dtype=torch.float64), atol=1e-6)
        d = (o - out0).abs().max().item()
        assert d <= 1e-6, f"{name}: keep 1.0 p={p} differs from unpruned by {d}"
        lines.append(f"  sanity keep 1.0 p={p}: {len(rec.stacks)} stacks patched, "
                     f"max|out - unpruned| = {d:.3g} ({'bit-identical' if d == 0 else 'close'})")
    # map vs diffusers' get_attention_scores (block 0 of every prunable stack, p = 0)
    cfg = ar.PruneConfig(keep_ratio=1.0, T=5, p=0)
    with ar.patch_unet(unet, cfg) as rec:
        forward(unet, inp)
    worst = 0.0
    for sname, r in rec.stacks.items():
        stack = unet.get_submodule(sname)
        h, _ = stack._operate_on_continuous_inputs(r["stack_in"])
        blk = stack.transformer_blocks[0]
        worst = max(worst, ar.check_map_against_diffusers(blk.attn1, blk.norm1(h)))
    assert worst < 1e-6, worst
    lines.append(f"  head-mean map vs diffusers Attention.get_attention_scores (f32): "
                 f"max diff {worst:.2e}")


@torch.no_grad()
def run_case(name, unet, inp, out0, case, kwargs, store_io, lines):
    cfg = ar.PruneConfig(**kwargs)
    with ar.patch_unet(unet, cfg) as rec:
        out = forward(unet, inp)
    assert torch.isfinite(out).all()
    # rerun: deterministic
    with ar.patch_unet(unet, cfg) as rec2:
        assert torch.equal(forward(unet, inp), out)
    tensors = {"out": out}
    stacks_json = {}
    for sname, r in rec.stacks.items():
        assert ar.check_recovery(r), f"{sname}: recovery is not an exact row copy"
        assert torch.equal(rec2.stacks[sname]["kept"], r["kept"])
        tensors[f"mask.{sname}"] = r["kept"].contiguous()
        tensors[f"score.{sname}"] = r["score"].contiguous()
        tensors[f"recover.{sname}"] = r["recover"].contiguous()
        if store_io:
            tensors[f"stack_in.{sname}"] = r["stack_in"].contiguous()
            tensors[f"stack_out.{sname}"] = r["stack_out"].contiguous()
        stacks_json[sname] = dict(
            N=r["N"], k=r["k"], depth=r["depth"],
            topk_near_tie=r["topk_near_tie"],
            topk_rel_gap=r["topk_rel_gap"],
            recovery_near_ties=r["recovery_near_ties"],
            recovery_min_rel_gap=r["recovery_min_rel_gap"],
        )
    rd = rel_max(out, out0)
    meta = dict(
        model=name,
        case=case,
        unet=f"tests/fixtures/unet/{name}/unet",
        inputs=f"tests/fixtures/unet/{name}/inputs.safetensors",
        unpruned=f"tests/fixtures/unet/{name}/outputs.safetensors:out",
        settings=cfg.as_dict(),
        dsap_early_steps=ar.dsap_early_steps(cfg.tau, cfg.steps) if cfg.dsap else 0,
        dsap_protected=ar.dsap_protected(unet),
        dsap_active=bool(cfg.dsap and cfg.step < ar.dsap_early_steps(cfg.tau, cfg.steps)),
        pruned=sorted(rec.stacks),
        plan=rec.plan,
        stacks=stacks_json,
        near_tie_rel=ar.NEAR_TIE_REL,
        any_topk_near_tie=any(any(s["topk_near_tie"]) for s in stacks_json.values()),
        stack_io_stored=store_io,
        rel_max_diff_vs_unpruned=rd,
    )
    base = os.path.join(OUT_ROOT, f"{name}_{case}")
    save_file(tensors, base + ".safetensors")
    with open(base + ".json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    ks = ", ".join(f"{s.split('.attentions')[0]}.{s.split('.')[-1]}:{v['k']}/{v['N']}"
                   for s, v in stacks_json.items())
    nt = [s for s, v in stacks_json.items() if any(v["topk_near_tie"])]
    gmin = min((g for v in stacks_json.values() for g in v["topk_rel_gap"] if g is not None),
               default=None)
    rnt = sum(sum(v["recovery_near_ties"]) for v in stacks_json.values())
    lines.append(f"  {case}: {len(stacks_json)} pruned [{ks}]; rel max diff vs unpruned {rd:.4f}; "
                 f"min top-k rel gap {gmin if gmin is None else f'{gmin:.2e}'}; "
                 f"top-k near ties {nt or 'none'}; recovery near ties {rnt}; "
                 f"{os.path.getsize(base + '.safetensors'):,} B")
    return out


def dir_size(path):
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(path) for f in fs)


def main():
    t0 = time.time()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}", flush=True)
    if os.path.exists(OUT_ROOT):
        shutil.rmtree(OUT_ROOT)
    os.makedirs(OUT_ROOT)
    lines = []
    for name in MODELS:
        unet, inp, ref = load(name)
        out0 = forward(unet, inp)
        d = (out0 - ref).abs().max().item()
        assert d <= 1e-6, f"{name}: unpruned output differs from outputs.safetensors by {d}"
        lines.append(f"{name}: unpruned vs committed outputs.safetensors max diff {d:.3g}")
        lines.append("  stacks: " + ", ".join(
            f"{s}(L{lv},D{dp})" for s, _, lv, dp in ar.attention_stacks(unet)))
        sanity(name, unet, inp, out0, lines)
        for case, kw, io in CASES:
            run_case(name, unet, inp, out0, case, kw, io, lines)
    print("\n".join(lines))
    print(f"total tests/fixtures/prune: {dir_size(OUT_ROOT):,} bytes; {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
