"""Python reference for AT-EDM attention-driven token pruning (docs: docs/pruning.md).

A library module (imported by tools/make_prune_fixtures.py); it does not bootstrap a venv
itself.  It patches the `Transformer2DModel` stacks of a diffusers `UNet2DConditionModel`
in place so that the chosen stacks run the pruned forward of the spec, and records per
pruned stack the kept indices [B,k], the G-WPR importance [B,N], the recovery map [B,N] and
near-tie diagnostics.

    from atedm_reference import PruneConfig, patch_unet
    with patch_unet(unet, PruneConfig(keep_ratio=0.5, T=5, p=0)) as rec:
        out = unet(...)
    rec.stacks["down_blocks.2.attentions.0"]["kept"]      # [B,k] int64, ascending

Definitions fixed here where atedm.md leaves room (all in float64 unless said otherwise):

* head-mean map: x = block_p.norm1(h) (the model's own f32 LayerNorm, as its forward
  computes it); q = x W_q^T (+b), k = x W_k^T (+b) in float64 with the f32 weights cast to f64;
  split into attn1.heads heads of width C/heads (diffusers' layout: channel = head*dh + d);
  P = softmax(q k^T * attn1.scale) over keys; A[b,i,j] = mean over heads.  Never the SDPA.
* G-WPR: s0 = 1/N, s(t+1) = s(t) A (row vector times matrix, i.e. s'[j] = sum_i A[i,j] s[i]),
  T times.  Stored as f32 (`score.*`), decided in f64.
* k = floor(keep_ratio * N + 0.5) evaluated in IEEE float64, clamped to [1, N].
* top-k: order by (score descending, index ascending) (numpy lexsort), take k, sort ascending.
* recovery attn-copy (the paper's): for pruned i, r(i) = K[argmax_m A[b,i,K[m]]], first
  maximum (= lowest index, since K is ascending).  For kept j, r(j) = j (NOT the argmax, which
  may be another token).  Output row i = proj_out(h_K)[position of r(i)].
* recovery cos-delta: h_p = states after block p (all tokens), h_K = kept states after the last
  block; r(i) = K[argmax_m cos(h_p[i], h_p[K[m]])] in float64 (cos = dot / |h_p[K[m]]|, the
  |h_p[i]| factor being common; a zero-norm kept state scores 0), first maximum; kept j: r(j) = j.
  Pruned i gets h_p[i] + (h_K[r(i)] - h_p[r(i)]) (f32), kept rows h_K exactly; proj_out then
  runs on all N rows.
* DSAP: protected while step < ceil(tau * steps) (math.ceil of the float64 product); protected
  stacks are down_blocks.<i>.attentions.0 of every down block with attentions and
  up_blocks.<i>.attentions.<last> of every up block with attentions.  mid_block is never
  protected.
* levels: down_blocks.<i> is level i+1, up_blocks.<i> is level L-i, mid_block level L (L =
  number of down blocks); AT-EDM-dagger skips every level-2 stack.
* a stack is prunable iff depth D >= p + 2.
"""

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

NEAR_TIE_REL = 1e-6


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
@dataclass
class PruneConfig:
    keep_ratio: float
    T: int = 5
    p: int = 0
    dsap: bool = False
    tau: float = 0.25
    step: int = 0
    steps: int = 1
    dagger: bool = False
    # optional explicit subset of stack names to consider (None: all attention stacks)
    only: list = None
    # record stack input/output hidden states (for per-stack tests)
    record_io: bool = True
    # "attn-copy" (the paper's) or "cos-delta"
    recovery: str = "attn-copy"

    def as_dict(self):
        return dict(keep_ratio=self.keep_ratio, T=self.T, p=self.p, dsap=self.dsap,
                    tau=self.tau, step=self.step, steps=self.steps, dagger=self.dagger,
                    recovery=self.recovery)


def keep_count(keep_ratio, n):
    """k = round-half-up(keep_ratio * N) in float64, clamped to [1, N]."""
    k = int(math.floor(float(keep_ratio) * n + 0.5))
    return max(1, min(n, k))


def dsap_early_steps(tau, steps):
    return int(math.ceil(float(tau) * steps))


# ---------------------------------------------------------------------------
# Stack inventory
# ---------------------------------------------------------------------------
def attention_stacks(unet):
    """[(name, module, level, depth)] of every Transformer2DModel in diffusers' module order."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    n_levels = len(unet.down_blocks)
    out = []
    for name, mod in unet.named_modules():
        if not isinstance(mod, Transformer2DModel):
            continue
        parts = name.split(".")
        if parts[0] == "down_blocks":
            level = int(parts[1]) + 1
        elif parts[0] == "up_blocks":
            level = n_levels - int(parts[1])
        elif parts[0] == "mid_block":
            level = n_levels
        else:
            raise ValueError(f"unexpected stack {name}")
        out.append((name, mod, level, len(mod.transformer_blocks)))
    return out


def dsap_protected(unet):
    """Names of the stacks DSAP protects in the early steps."""
    prot = []
    for i, blk in enumerate(unet.down_blocks):
        if getattr(blk, "attentions", None) is not None and len(blk.attentions) > 0:
            prot.append(f"down_blocks.{i}.attentions.0")
    for i, blk in enumerate(unet.up_blocks):
        if getattr(blk, "attentions", None) is not None and len(blk.attentions) > 0:
            prot.append(f"up_blocks.{i}.attentions.{len(blk.attentions) - 1}")
    return prot


def plan(unet, cfg):
    """Decide, per stack, whether it is pruned at this step and why not.

    Returns [(name, module, level, depth, pruned: bool, reason: str)]."""
    protected = set(dsap_protected(unet))
    early = cfg.dsap and cfg.step < dsap_early_steps(cfg.tau, cfg.steps)
    rows = []
    for name, mod, level, depth in attention_stacks(unet):
        if cfg.only is not None and name not in cfg.only:
            reason = "not selected"
        elif depth < cfg.p + 2:
            reason = f"depth {depth} < p + 2"
        elif cfg.dagger and level == 2:
            reason = "dagger: level 2 not pruned"
        elif early and name in protected:
            reason = "DSAP: protected in early step"
        else:
            reason = ""
        rows.append((name, mod, level, depth, reason == "", reason))
    return rows


# ---------------------------------------------------------------------------
# The pruning maths
# ---------------------------------------------------------------------------
def head_mean_attention(attn, x):
    """A[b,i,j] = mean over heads of softmax(q k^T * scale), float64, from attn1 of a block.

    x: norm1 output [B,N,C] (f32).  Computed explicitly, never via SDPA."""
    assert not attn.is_cross_attention, "attn1 must be self-attention"
    assert getattr(attn, "norm_q", None) is None and getattr(attn, "norm_k", None) is None
    assert getattr(attn, "spatial_norm", None) is None and getattr(attn, "group_norm", None) is None
    xd = x.double()

    def lin(m):
        return F.linear(xd, m.weight.double(), None if m.bias is None else m.bias.double())

    q, k = lin(attn.to_q), lin(attn.to_k)
    B, N, C = q.shape
    H = attn.heads
    dh = C // H
    assert dh * H == C and abs(attn.scale - dh ** -0.5) < 1e-12
    q = q.view(B, N, H, dh).transpose(1, 2)
    k = k.view(B, N, H, dh).transpose(1, 2)
    logits = torch.matmul(q, k.transpose(-1, -2)) * attn.scale
    P = torch.softmax(logits, dim=-1)
    return P.mean(dim=1)


def gwpr(A, T):
    """importance s(T) [B,N] float64 with s0 uniform and s(t+1) = s(t) A."""
    B, N, _ = A.shape
    s = torch.full((B, N), 1.0 / N, dtype=torch.float64)
    for _ in range(T):
        s = torch.einsum("bi,bij->bj", s, A)
    return s


def topk_kept(scores, k):
    """Kept indices [B,k] int64 ascending, plus near-tie diagnostics per batch element."""
    s = scores.detach().cpu().numpy()
    B, N = s.shape
    kept, gaps = [], []
    for b in range(B):
        idx = np.arange(N)
        order = np.lexsort((idx, -s[b]))  # score desc, index asc
        kept.append(np.sort(order[:k]))
        if k < N:
            a, c = s[b, order[k - 1]], s[b, order[k]]
            gaps.append(float((a - c) / abs(a)) if a != 0 else float("inf"))
        else:
            gaps.append(None)
    return torch.from_numpy(np.stack(kept)).long(), gaps


def _pick_kept(score_rows, kept):
    """From score_rows(b) -> [N,k] scores of every token against the kept tokens of batch row
    b: r [B,N] int64 (token index), pos [B,N] (position inside K; first maximum = lowest index,
    since K is ascending) and near-tie diagnostics. A kept token maps to itself."""
    B, k = kept.shape
    N = score_rows(0).shape[0]
    r = torch.empty((B, N), dtype=torch.long)
    pos = torch.empty((B, N), dtype=torch.long)
    ties, min_gap = [], []
    for b in range(B):
        Kb = kept[b]
        sub = score_rows(b)
        am = np.argmax(sub, axis=1)
        where = {int(j): m for m, j in enumerate(Kb.tolist())}
        nt, mg = 0, float("inf")
        for i in range(N):
            if i in where:
                r[b, i] = i
                pos[b, i] = where[i]
            else:
                r[b, i] = Kb[am[i]]
                pos[b, i] = int(am[i])
                if k > 1:
                    row = np.sort(sub[i])[::-1]
                    g = (row[0] - row[1]) / max(abs(row[0]), 1e-30)
                    mg = min(mg, float(g))
                    nt += int(g < NEAR_TIE_REL)
        ties.append(nt)
        min_gap.append(mg if mg != float("inf") else None)
    return r, pos, ties, min_gap


def recovery_map(A, kept):
    """attn-copy: r [B,N] int64 (token index), pos [B,N] (position inside K) and near-tie
    counts, from the head-mean map A [B,N,N]."""
    return _pick_kept(lambda b: A[b][:, kept[b]].numpy(), kept)


def cosine_recovery_map(h, kept):
    """cos-delta: r, pos and near-tie diagnostics from the states h [B,N,C] after block p
    (float64 sums; cos = dot / |h[K[m]]|, the |h[i]| factor being common; a zero-norm kept
    state scores 0)."""
    def rows(b):
        hb = h[b].double().numpy()
        hk = hb[kept[b].numpy()]
        norms = np.sqrt((hk * hk).sum(axis=1))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(norms > 0, (hb @ hk.T) / norms, 0.0)
    return _pick_kept(rows, kept)


# ---------------------------------------------------------------------------
# Pruned stack forward
# ---------------------------------------------------------------------------
class Recorder:
    def __init__(self, cfg):
        self.cfg = cfg
        self.stacks = {}   # name -> record of the last call
        self.plan = []     # (name, level, depth, pruned, reason)


def _pruned_forward(stack, name, cfg, rec, hidden_states, encoder_hidden_states=None,
                    timestep=None, added_cond_kwargs=None, class_labels=None,
                    cross_attention_kwargs=None, attention_mask=None,
                    encoder_attention_mask=None, return_dict=True):
    assert stack.is_input_continuous and stack.use_linear_projection, \
        "only the SD-XL stack layout (continuous input, linear projections) is supported"
    assert attention_mask is None, "self-attention masks are not supported"
    if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:
        encoder_attention_mask = (1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0
        encoder_attention_mask = encoder_attention_mask.unsqueeze(1)

    p = cfg.p
    blocks = stack.transformer_blocks
    D = len(blocks)
    assert D >= p + 2
    B, _, Hh, Ww = hidden_states.shape
    N = Hh * Ww
    residual = hidden_states
    h, inner_dim = stack._operate_on_continuous_inputs(hidden_states)
    kw = dict(attention_mask=None, encoder_hidden_states=encoder_hidden_states,
              encoder_attention_mask=encoder_attention_mask, timestep=timestep,
              cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels)

    # 1. blocks 0..p-1 on all tokens
    for blk in blocks[:p]:
        h = blk(h, **kw)
    # 2. head-mean map of block p's attn1 (from the same norm1 output its forward uses)
    bp = blocks[p]
    assert bp.norm_type == "layer_norm" and bp.pos_embed is None and not bp.only_cross_attention
    A = head_mean_attention(bp.attn1, bp.norm1(h))
    # block p itself on all tokens, complete (attn1, attn2, FF, residuals)
    h = bp(h, **kw)
    # 3.-4. G-WPR and mask
    scores = gwpr(A, cfg.T)
    k = keep_count(cfg.keep_ratio, N)
    kept, gaps = topk_kept(scores, k)
    # 5. gather after block p's FF residual; blocks p+1.. on kept tokens, proj_out on kept
    idx = kept.unsqueeze(-1).expand(B, k, h.shape[-1])
    hK0 = torch.gather(h, 1, idx)
    hK = hK0
    for blk in blocks[p + 1:]:
        hK = blk(hK, **kw)
    if cfg.recovery == "cos-delta":
        # 6'. own state + the most cosine-similar kept token's update; proj_out on all rows
        r, pos, rties, rgap = cosine_recovery_map(h, kept)
        upd = torch.gather(hK - hK0, 1, pos.unsqueeze(-1).expand(B, N, h.shape[-1]))
        full = (h + upd).scatter(1, idx, hK)
        y = stack.proj_out(full)
    else:
        assert cfg.recovery == "attn-copy", cfg.recovery
        yK = stack.proj_out(hK)
        # 6. similarity-based recovery, then + residual
        r, pos, rties, rgap = recovery_map(A, kept)
        y = torch.gather(yK, 1, pos.unsqueeze(-1).expand(B, N, yK.shape[-1]))
    y = y.reshape(B, Hh, Ww, inner_dim).permute(0, 3, 1, 2).contiguous()
    output = y + residual

    recd = dict(N=N, k=k, depth=D, kept=kept, score=scores.float(), recover=r,
                topk_rel_gap=gaps,
                topk_near_tie=[g is not None and g < NEAR_TIE_REL for g in gaps],
                recovery_near_ties=rties, recovery_min_rel_gap=rgap)
    if cfg.record_io:
        recd["stack_in"] = residual.detach().clone()
        recd["stack_out"] = output.detach().clone()
    rec.stacks[name] = recd
    if not return_dict:
        return (output,)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
    return Transformer2DModelOutput(sample=output)


@contextlib.contextmanager
def patch_unet(unet, cfg):
    """Patch the stacks chosen by `plan(unet, cfg)` for the duration of the with-block.

    Yields a Recorder; rec.stacks[name] holds kept [B,k] int64, score [B,N] f32,
    recover [B,N] int64 and near-tie diagnostics of the last forward."""
    rec = Recorder(cfg)
    patched = []
    for name, mod, level, depth, pruned, reason in plan(unet, cfg):
        rec.plan.append(dict(name=name, level=level, depth=depth, pruned=pruned, reason=reason))
        if not pruned:
            continue
        assert "forward" not in mod.__dict__, f"{name} already patched"

        def fwd(*args, _m=mod, _n=name, **kwargs):
            return _pruned_forward(_m, _n, cfg, rec, *args, **kwargs)

        mod.forward = fwd
        patched.append(mod)
    try:
        yield rec
    finally:
        for mod in patched:
            del mod.forward


# ---------------------------------------------------------------------------
# Self-checks usable by callers
# ---------------------------------------------------------------------------
@torch.no_grad()
def check_map_against_diffusers(attn, x):
    """max|A_ours - A_diffusers| where A_diffusers comes from diffusers' own
    Attention.get_attention_scores (classic baddbmm + softmax path, f32)."""
    q = attn.head_to_batch_dim(attn.to_q(x))
    k = attn.head_to_batch_dim(attn.to_k(x))
    probs = attn.get_attention_scores(q, k, None)  # [B*H,N,N]
    B, N = x.shape[0], x.shape[1]
    ref = probs.view(B, attn.heads, N, N).mean(1).double()
    return (head_mean_attention(attn, x) - ref).abs().max().item()


def check_recovery(rec_stack):
    """out - res at every pruned i must equal out - res at r(i) (up to the f32 rounding of
    the residual add)."""
    res = rec_stack["stack_in"]
    d = rec_stack["stack_out"] - res
    B, C, H, W = d.shape
    d = d.reshape(B, C, H * W)
    r = rec_stack["recover"]
    g = torch.gather(d, 2, r.unsqueeze(1).expand(B, C, H * W))
    tol = 1e-6 * (res.abs().max() + d.abs().max()).item()
    return (g - d).abs().max().item() <= tol
