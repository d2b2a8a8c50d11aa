"""Python reference for the ToMe (token merging) baseline of atedm (docs: docs/pruning.md,
section "ToMe, the baseline").  tomesd-like, but fully deterministic.

A library module (imported by tools/make_prune_fixtures.py); it does not bootstrap a venv
itself.  It patches the `BasicTransformerBlock`s of the selected `Transformer2DModel` stacks of a
diffusers `UNet2DConditionModel` in place, and records per merged block the merge plan.

    from tome_reference import TomeConfig, patch_unet_tome
    with patch_unet_tome(unet, TomeConfig(ratio=0.5, seed=7, step=3)) as rec:
        out = unet(...)
    rec.blocks["down_blocks.1.attentions.0.transformer_blocks.0"]["slot"]   # [B,N] int64

Definition (exactly what the Rust engine implements):

* Applies to every BasicTransformerBlock of the selected stacks.  Levels: down_blocks.i is level
  i+1, up_blocks.i is level L-i, mid_block is level L (L = number of down blocks).  A stack is
  selected iff its downsample factor 2**(level-1) <= max_downsample (default 4: SD-XL's levels 2
  and 3).
* block_id: the global index of the BasicTransformerBlock in UNet forward order (down_blocks in
  order, their attentions in order, then mid_block, then up_blocks), counting every block of
  every attention stack, selected or not, starting at 0.
* The block input x [B,N,C]; the stack's token grid is h x w (N = h*w, token t = y*w + x,
  row-major, as diffusers flattens).
* Windows 2x2: hs = h//2, ws = w//2; window (wy, wx) for wy < hs, wx < ws; window_index =
  wy*ws + wx.  Destination offset o in 0..3: deterministic mode o = 0; random mode
  o = mix32(seed ^ mix32(block_id ^ mix32(step ^ mix32(window_index)))) & 3, all uint32, with
      mix32(x): x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16
  (products mod 2**32).  The window's destination token is at row 2*wy + (o >> 1), column
  2*wx + (o & 1).  All other tokens (including the leftover last row/column when h or w is odd)
  are sources.  D: destination token indices ascending (Ndst = hs*ws).  S: source token indices
  ascending (Nsrc = N - Ndst).
* Metric: the rows of x (the block input, before norm1), each divided by its L2 norm, in float64.
  scores[b,s,d] = m[b,S[s]] . m[b,D[d]]; best[b,s] = max over d; idx[b,s] = the first (lowest d)
  argmax.
* r = min(floor(ratio * N) (float64), Nsrc).  The merged sources are the r sources with the
  highest best[b,s], ordered by (best descending, s ascending).  Unmerged sources U: the rest, in
  ascending s.  Nunm = Nsrc - r.  Per batch element b.
* merge m(y), y [B,N,C] -> [B, Nunm + Ndst, C]: out[:, u] = y[S[U[u]]] for u < Nunm;
  out[:, Nunm + d] = plain mean of {y[D[d]]} and {y[S[s]] : s merged, idx[s] == d}.
* unmerge u(z), z [B, Nunm+Ndst, C] -> [B,N,C]: out[t] = z[slot[t]] with slot(D[d]) = Nunm + d,
  slot(S[U[u]]) = u, slot(S[s]) = Nunm + idx[s] for merged s.
* The block with merging (one plan per block per forward, computed once at the start of the block
  from its input x, used for all sub-layers):
      x = u(attn1(m(norm1(x)))) + x                          if merge_attn      else the usual
      x = u(attn2(m(norm2(x)), encoder_hidden_states)) + x   if merge_crossattn else the usual
      x = u(ff(m(norm3(x)))) + x                             if merge_mlp       else the usual
  attn1 is self-attention over the merged tokens.  The module's own attn1/attn2/ff/norm modules
  run in f32 as diffusers computes them; only the plan (metric, scores, argmax, selection) is
  decided in float64.
* Parameters: ratio (float in (0,1]), merge_attn (True), merge_crossattn (False), merge_mlp
  (False), max_downsample (4), random (True), seed (uint32, 0), step (int, 0).

Choices fixed here where the definition leaves room:

* The mean of a destination slot is computed in f32 as (y[D[d]] + the merged source rows added in
  ascending s) / count, count = 1 + number of merged sources with idx == d.
* r == 0 (for a block): m and u are the identity (as in tomesd), so the block is exactly
  diffusers' forward.  `TomeConfig.force_permute=True` runs the permutation m/u even then
  (a test of the m/u plumbing: equal to diffusers up to the f32 reduction order of attention).
* step and seed are reduced mod 2**32 before mixing.
* near ties (diagnostics only): relative gap (a - b) / |a| between the best and second-best score
  of every merged source (argmax), and between the r-th and (r+1)-th best values (selection
  boundary); both on the float64 values.
"""

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

NEAR_TIE_REL = 1e-6
M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------
@dataclass
class TomeConfig:
    ratio: float
    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False
    max_downsample: int = 4
    random: bool = True
    seed: int = 0
    step: int = 0
    # debugging/test only: run the merge/unmerge permutation even when r == 0
    force_permute: bool = False

    def as_dict(self):
        return dict(ratio=self.ratio, merge_attn=self.merge_attn,
                    merge_crossattn=self.merge_crossattn, merge_mlp=self.merge_mlp,
                    max_downsample=self.max_downsample, random=self.random,
                    seed=self.seed, step=self.step)


def mix32(x):
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def dst_offset(cfg, block_id, window_index):
    if not cfg.random:
        return 0
    v = mix32((cfg.step & M32) ^ mix32(window_index))
    v = mix32((block_id & M32) ^ v)
    v = mix32((cfg.seed & M32) ^ v)
    return v & 3


def merge_count(ratio, n, nsrc):
    """r = min(floor(ratio * N), Nsrc), the product in IEEE float64."""
    return max(0, min(nsrc, int(math.floor(float(ratio) * n))))


def partition(cfg, block_id, h, w):
    """(D, S): destination and source token indices, ascending (int64 numpy)."""
    hs, ws = h // 2, w // 2
    is_dst = np.zeros(h * w, dtype=bool)
    for wy in range(hs):
        for wx in range(ws):
            o = dst_offset(cfg, block_id, wy * ws + wx)
            is_dst[(2 * wy + (o >> 1)) * w + 2 * wx + (o & 1)] = True
    t = np.arange(h * w, dtype=np.int64)
    return t[is_dst], t[~is_dst]


# ---------------------------------------------------------------------------
# Stack / block inventory
# ---------------------------------------------------------------------------
def stacks_in_forward_order(unet):
    """[(name, module, level)] of every Transformer2DModel in UNet forward order
    (down_blocks, mid_block, up_blocks; attentions in order)."""
    L = len(unet.down_blocks)
    out = []

    def add(prefix, blk, level):
        for j, a in enumerate(getattr(blk, "attentions", None) or []):
            out.append((f"{prefix}.attentions.{j}", a, level))

    for i, blk in enumerate(unet.down_blocks):
        add(f"down_blocks.{i}", blk, i + 1)
    if unet.mid_block is not None:
        add("mid_block", unet.mid_block, L)
    for i, blk in enumerate(unet.up_blocks):
        add(f"up_blocks.{i}", blk, L - i)
    return out


def block_plan(unet, cfg):
    """[dict(name, stack, level, block_id, selected)] of every BasicTransformerBlock."""
    rows, bid = [], 0
    for sname, stack, level in stacks_in_forward_order(unet):
        sel = 2 ** (level - 1) <= cfg.max_downsample
        for j, _ in enumerate(stack.transformer_blocks):
            rows.append(dict(name=f"{sname}.transformer_blocks.{j}", stack=sname, level=level,
                             block_id=bid, selected=sel))
            bid += 1
    return rows


# ---------------------------------------------------------------------------
# The merge plan
# ---------------------------------------------------------------------------
def _rel_gap(a, b):
    return float((a - b) / abs(a)) if a != 0 else float("inf")


def merge_plan(cfg, block_id, x, h, w):
    """The plan of one block from its input x [B,N,C] (f32).

    Returns dict with N, h, w, Nsrc, Ndst, r, Nunm, dst [Ndst], src [Nsrc] (numpy int64),
    slot [B,N] int64 (torch), unm_tok [B,Nunm] (token indices of U, ascending),
    merged_src [B][list of (token, d)] (merged sources ascending), and diagnostics."""
    B, N, _ = x.shape
    assert N == h * w, (N, h, w)
    D, S = partition(cfg, block_id, h, w)
    Ndst, Nsrc = len(D), len(S)
    r = merge_count(cfg.ratio, N, Nsrc)
    Nunm = Nsrc - r

    xd = x.detach().double().cpu()
    norm = xd.norm(dim=-1, keepdim=True)
    assert bool((norm > 0).all()), "zero-norm token row"
    m = (xd / norm).numpy()

    slot = np.empty((B, N), dtype=np.int64)
    unm_tok = np.empty((B, Nunm), dtype=np.int64)
    merged_src, arg_gap, sel_gap, dst_count = [], [], [], []
    for b in range(B):
        scores = m[b, S] @ m[b, D].T  # [Nsrc, Ndst] float64
        idx = np.argmax(scores, axis=1)  # first maximum = lowest d
        best = scores[np.arange(Nsrc), idx]
        order = np.lexsort((np.arange(Nsrc), -best))  # best desc, s asc
        merged = np.sort(order[:r])
        unm = np.sort(order[r:])
        slot[b, D] = Nunm + np.arange(Ndst)
        slot[b, S[unm]] = np.arange(Nunm)
        slot[b, S[merged]] = Nunm + idx[merged]
        unm_tok[b] = S[unm]
        merged_src.append([(int(S[s]), int(idx[s])) for s in merged])
        # diagnostics
        g = float("inf")
        if Ndst > 1:
            for s in merged:
                row = np.sort(scores[s])[::-1]
                g = min(g, _rel_gap(row[0], row[1]))
        arg_gap.append(None if g == float("inf") else g)
        sel_gap.append(_rel_gap(best[order[r - 1]], best[order[r]]) if 0 < r < Nsrc else None)
        cnt = np.bincount(idx[merged], minlength=Ndst) if r > 0 else np.zeros(Ndst, np.int64)
        dst_count.append(dict(dst_with_sources=int((cnt > 0).sum()), max_sources=int(cnt.max())))
    return dict(N=N, h=h, w=w, Nsrc=Nsrc, Ndst=Ndst, r=r, Nunm=Nunm, dst=D, src=S,
                slot=torch.from_numpy(slot), unm_tok=torch.from_numpy(unm_tok),
                merged_src=merged_src, argmax_min_rel_gap=arg_gap, selection_rel_gap=sel_gap,
                merged_dst_count=dst_count)


def make_merge_unmerge(plan, identity):
    """(m, u) functions of a plan.  identity=True: both are the identity."""
    if identity:
        return (lambda y: y), (lambda z: z)
    slot, unm_tok, D, Nunm = plan["slot"], plan["unm_tok"], plan["dst"], plan["Nunm"]
    Ddev = torch.from_numpy(D)

    def merge(y):
        B, N, C = y.shape
        outs = []
        for b in range(B):
            unm = y[b].index_select(0, unm_tok[b])
            acc = y[b].index_select(0, Ddev).clone()
            cnt = torch.ones(len(D), dtype=y.dtype)
            ms = plan["merged_src"][b]
            for t, d in ms:  # ascending source token order
                acc[d] = acc[d] + y[b, t]
                cnt[d] += 1
            outs.append(torch.cat([unm, acc / cnt[:, None]], 0))
        return torch.stack(outs, 0)

    def unmerge(z):
        B, _, C = z.shape
        return torch.gather(z, 1, slot.unsqueeze(-1).expand(B, slot.shape[1], C))

    return merge, unmerge


# ---------------------------------------------------------------------------
# Patched BasicTransformerBlock forward
# ---------------------------------------------------------------------------
class Recorder:
    def __init__(self, cfg):
        self.cfg = cfg
        self.blocks = {}   # block name -> plan record of the last call
        self.plan = []     # every block: name, stack, level, block_id, selected
        self.grid = {}     # stack name -> (h, w) of its last call


def _tome_block_forward(blk, name, block_id, stack_name, cfg, rec, hidden_states,
                        attention_mask=None, encoder_hidden_states=None,
                        encoder_attention_mask=None, timestep=None,
                        cross_attention_kwargs=None, class_labels=None,
                        added_cond_kwargs=None):
    assert blk.norm_type == "layer_norm" and blk.pos_embed is None
    assert not blk.only_cross_attention and blk._chunk_size is None
    assert attention_mask is None, "self-attention masks are not supported"
    cak = dict(cross_attention_kwargs) if cross_attention_kwargs is not None else {}
    assert cak.pop("gligen", None) is None
    x = hidden_states
    h, w = rec.grid[stack_name]
    plan = merge_plan(cfg, block_id, x, h, w)
    m, u = make_merge_unmerge(plan, identity=(plan["r"] == 0 and not cfg.force_permute))
    rec.blocks[name] = dict(plan, block_id=block_id, stack=stack_name, x=x.detach().clone())

    # 1. self-attention
    n = blk.norm1(x)
    if cfg.merge_attn:
        a = u(blk.attn1(m(n), encoder_hidden_states=None, attention_mask=None, **cak))
    else:
        a = blk.attn1(n, encoder_hidden_states=None, attention_mask=None, **cak)
    x = a + x
    # 2. cross-attention
    if blk.attn2 is not None:
        n = blk.norm2(x)
        if cfg.merge_crossattn:
            a = u(blk.attn2(m(n), encoder_hidden_states=encoder_hidden_states,
                            attention_mask=encoder_attention_mask, **cak))
        else:
            a = blk.attn2(n, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=encoder_attention_mask, **cak)
        x = a + x
    # 3. feed-forward
    n = blk.norm3(x)
    f = u(blk.ff(m(n))) if cfg.merge_mlp else blk.ff(n)
    x = f + x
    return x


@contextlib.contextmanager
def patch_unet_tome(unet, cfg):
    """Patch the BasicTransformerBlocks of the selected stacks for the duration of the with-block.

    A forward pre-hook on each selected stack records its grid h x w (from its [B,C,h,w] input).
    Yields a Recorder; rec.blocks[name] holds the plan (slot [B,N] int64, N, h, w, Nsrc, Ndst,
    r, near-tie diagnostics) and the block input x of the last forward."""
    rec = Recorder(cfg)
    rows = block_plan(unet, cfg)
    rec.plan = rows
    patched, hooks = [], []
    stacks = {n: s for n, s, _ in stacks_in_forward_order(unet)}
    for sname in sorted({r["stack"] for r in rows if r["selected"]}):
        def pre(mod, args, kwargs, _n=sname):
            hs = args[0] if args else kwargs["hidden_states"]
            assert hs.ndim == 4
            rec.grid[_n] = (int(hs.shape[2]), int(hs.shape[3]))
        hooks.append(stacks[sname].register_forward_pre_hook(pre, with_kwargs=True))
    for row in rows:
        if not row["selected"]:
            continue
        blk = unet.get_submodule(row["name"])
        assert "forward" not in blk.__dict__, f"{row['name']} already patched"

        def fwd(*args, _b=blk, _r=row, **kwargs):
            return _tome_block_forward(_b, _r["name"], _r["block_id"], _r["stack"], cfg, rec,
                                       *args, **kwargs)

        blk.forward = fwd
        patched.append(blk)
    try:
        yield rec
    finally:
        for blk in patched:
            del blk.forward
        for hk in hooks:
            hk.remove()


# ---------------------------------------------------------------------------
# Self-checks usable by callers
# ---------------------------------------------------------------------------
def naive_slot(cfg, block_id, x, h, w):
    """Independent loop implementation of the plan (pure Python floats) -> slot [B,N] list."""
    B, N, C = x.shape
    xs = x.detach().double().tolist()
    hs, ws = h // 2, w // 2
    dst = set()
    for wy in range(hs):
        for wx in range(ws):
            if cfg.random:
                v = mix32(cfg.seed ^ mix32(block_id ^ mix32(cfg.step ^ mix32(wy * ws + wx))))
                o = v & 3
            else:
                o = 0
            dst.add((2 * wy + o // 2) * w + 2 * wx + o % 2)
    D = sorted(dst)
    S = [t for t in range(N) if t not in dst]
    r = min(int(math.floor(cfg.ratio * N)), len(S))
    out = []
    for b in range(B):
        rows = []
        for t in range(N):
            nr = math.sqrt(sum(v * v for v in xs[b][t]))
            rows.append([v / nr for v in xs[b][t]])
        best, idx = [], []
        for t in S:
            bv, bd = None, None
            for d, td in enumerate(D):
                sc = sum(p * q for p, q in zip(rows[t], rows[td]))
                if bv is None or sc > bv:
                    bv, bd = sc, d
            best.append(bv)
            idx.append(bd)
        order = sorted(range(len(S)), key=lambda s: (-best[s], s))
        merged = set(order[:r])
        unm = sorted(set(range(len(S))) - merged)
        nunm = len(unm)
        slot = [0] * N
        for d, td in enumerate(D):
            slot[td] = nunm + d
        for u, s in enumerate(unm):
            slot[S[s]] = u
        for s in merged:
            slot[S[s]] = nunm + idx[s]
        out.append(slot)
    return out


def check_slot(rec_block):
    """Structural checks of a recorded plan; returns None or an error string."""
    slot, D, S = rec_block["slot"], rec_block["dst"], rec_block["src"]
    Nunm, Ndst, r = rec_block["Nunm"], rec_block["Ndst"], rec_block["r"]
    for b in range(slot.shape[0]):
        sb = slot[b].numpy()
        if not ((sb >= 0).all() and (sb < Nunm + Ndst).all()):
            return "slot out of range"
        if not (sb[D] == Nunm + np.arange(Ndst)).all():
            return "dst token does not map to its own slot"
        ss = sb[S]
        unm = ss[ss < Nunm]
        if len(unm) != Nunm or not (unm == np.arange(Nunm)).all():
            return "unmerged sources (ascending s) do not get slots 0..Nunm-1 in order"
        if int((ss >= Nunm).sum()) != r:
            return "number of merged sources != r"
    return None
