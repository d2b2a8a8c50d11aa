// ToMe (token merging, tomesd semantics as atedm defines it) for the side-by-side baseline.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.
//
// One merge plan per BasicTransformerBlock, from its input x [B, N, C] on an h x w grid:
//   roles    : destinations (one per 2x2 window) then sources, each list ascending by token
//   metric   : x rows normalised (f32), split into destination and source matrices
//   (matmul) : cosine scores [B, Nsrc, Ndst]
//   match    : best score and its destination per source (first maximum)
//   (top-k)  : the r sources with the highest best score are merged (prune.wgsl's topk_flags)
//   slots    : merged row of every token (unmerged sources first, then destinations)
//   offsets / members: CSR of the tokens of every merged row, ascending token order
// merge is then a segment mean over the CSR, unmerge a gather by slot plus the residual.

struct TomeParams {
    batch: u32,
    n: u32,        // tokens
    c: u32,        // channels
    h: u32,        // grid rows
    w: u32,        // grid columns
    nsrc: u32,
    ndst: u32,
    r: u32,        // merged sources
    nout: u32,     // merged rows = n - r
    seed: u32,
    block_id: u32,
    step: u32,
    random: u32,   // 0: destination at each window's top-left
    _p0: u32,
    _p1: u32,
    _p2: u32,
};

@group(0) @binding(0) var<uniform> tp: TomeParams;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// Token index of the destination of window (wy, wx).
fn dst_token(wy: u32, wx: u32) -> u32 {
    let ws = tp.w / 2u;
    var o = 0u;
    if (tp.random != 0u) {
        o = mix32(tp.seed ^ mix32(tp.block_id ^ mix32(tp.step ^ mix32(wy * ws + wx)))) & 3u;
    }
    return (2u * wy + (o >> 1u)) * tp.w + 2u * wx + (o & 1u);
}

// ---- roles[0..ndst) = destination tokens, roles[ndst..n) = source tokens, both ascending.
@group(0) @binding(1) var<storage, read_write> ro_out: array<u32>;

@compute @workgroup_size(64)
fn tome_roles(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if (t >= tp.n) { return; }
    let hs = tp.h / 2u;
    let ws = tp.w / 2u;
    let y = t / tp.w;
    let x = t % tp.w;
    // Destinations with a lower token index: all windows of earlier window rows, plus those of
    // this window row that come before t.
    var before = hs * ws;
    var is_dst = false;
    if (y < 2u * hs) {
        let wy = y / 2u;
        before = wy * ws;
        for (var wx = 0u; wx < ws; wx = wx + 1u) {
            let d = dst_token(wy, wx);
            if (d < t) { before = before + 1u; }
            if (d == t) { is_dst = true; }
        }
    }
    if (is_dst) {
        ro_out[before] = t;
    } else {
        ro_out[tp.ndst + t - before] = t;
    }
}

// ---- metric: rows of x in roles order, divided by their L2 norm, as f32; destinations to
// md [B, ndst, C], sources to ms [B, nsrc, C]. One workgroup per (b, role position).
@group(0) @binding(1) var<storage, read> me_x: array<ST>;
@group(0) @binding(2) var<storage, read> me_roles: array<u32>;
@group(0) @binding(3) var<storage, read_write> me_dst: array<f32>;
@group(0) @binding(4) var<storage, read_write> me_src: array<f32>;

var<workgroup> me_part: array<f32, 64>;

@compute @workgroup_size(64)
fn tome_metric(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;   // b * n + i
    let valid = row < tp.batch * tp.n;
    var ss = 0.0;
    var base = 0u;
    if (valid) {
        let b = row / tp.n;
        base = (b * tp.n + me_roles[row % tp.n]) * tp.c;
        for (var ch = lid; ch < tp.c; ch = ch + 64u) {
            let v = f32(me_x[base + ch]);
            ss = ss + v * v;
        }
    }
    me_part[lid] = ss;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s >> 1u) {
        if (lid < s) { me_part[lid] = me_part[lid] + me_part[lid + s]; }
        workgroupBarrier();
    }
    if (!valid) { return; }
    let inv = 1.0 / max(sqrt(me_part[0]), 1e-12);
    let b = row / tp.n;
    let i = row % tp.n;
    for (var ch = lid; ch < tp.c; ch = ch + 64u) {
        let v = f32(me_x[base + ch]) * inv;
        if (i < tp.ndst) {
            me_dst[(b * tp.ndst + i) * tp.c + ch] = v;
        } else {
            me_src[(b * tp.nsrc + i - tp.ndst) * tp.c + ch] = v;
        }
    }
}

// ---- match: best[b, s] = max_d scores[b, s, d], idx[b, s] = its first argmax.
@group(0) @binding(1) var<storage, read> ma_scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> ma_best: array<f32>;
@group(0) @binding(3) var<storage, read_write> ma_idx: array<u32>;

@compute @workgroup_size(64)
fn tome_match(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if (t >= tp.batch * tp.nsrc) { return; }
    let base = t * tp.ndst;
    var best = ma_scores[base];
    var arg = 0u;
    for (var d = 1u; d < tp.ndst; d = d + 1u) {
        let v = ma_scores[base + d];
        if (v > best) { best = v; arg = d; }
    }
    ma_best[t] = best;
    ma_idx[t] = arg;
}

// ---- slots: merged row of every token. Unmerged sources take rows 0..nout-ndst in ascending
// order, destination d row nout-ndst+d, a merged source the row of its destination.
@group(0) @binding(1) var<storage, read> sl_roles: array<u32>;
@group(0) @binding(2) var<storage, read> sl_flags: array<u32>;   // [B, nsrc], 1 = merged
@group(0) @binding(3) var<storage, read> sl_idx: array<u32>;     // [B, nsrc]
@group(0) @binding(4) var<storage, read_write> sl_slot: array<u32>;  // [B, n]

@compute @workgroup_size(64)
fn tome_slots(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if (e >= tp.batch * tp.n) { return; }
    let b = e / tp.n;
    let i = e % tp.n;
    let t = sl_roles[i];
    let nunm = tp.nout - tp.ndst;
    var slot = 0u;
    if (i < tp.ndst) {
        slot = nunm + i;
    } else {
        let s = i - tp.ndst;
        if (sl_flags[b * tp.nsrc + s] != 0u) {
            slot = nunm + sl_idx[b * tp.nsrc + s];
        } else {
            var merged_before = 0u;
            for (var q = 0u; q < s; q = q + 1u) { merged_before = merged_before + sl_flags[b * tp.nsrc + q]; }
            slot = s - merged_before;
        }
    }
    sl_slot[b * tp.n + t] = slot;
}

// ---- offsets[b, o] = number of tokens whose slot is below o, for o in 0..=nout.
@group(0) @binding(1) var<storage, read> of_slot: array<u32>;
@group(0) @binding(2) var<storage, read_write> of_out: array<u32>;   // [B, nout + 1]

@compute @workgroup_size(64)
fn tome_offsets(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if (e >= tp.batch * (tp.nout + 1u)) { return; }
    let b = e / (tp.nout + 1u);
    let o = e % (tp.nout + 1u);
    var count = 0u;
    for (var t = 0u; t < tp.n; t = t + 1u) {
        count = count + select(0u, 1u, of_slot[b * tp.n + t] < o);
    }
    of_out[e] = count;
}

// ---- members[b, offsets[slot[t]] + rank] = t, rank = tokens before t with the same slot.
@group(0) @binding(1) var<storage, read> mb_slot: array<u32>;
@group(0) @binding(2) var<storage, read> mb_offsets: array<u32>;
@group(0) @binding(3) var<storage, read_write> mb_out: array<u32>;   // [B, n]

@compute @workgroup_size(64)
fn tome_members(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if (e >= tp.batch * tp.n) { return; }
    let b = e / tp.n;
    let t = e % tp.n;
    let slot = mb_slot[e];
    var rank = 0u;
    for (var q = 0u; q < t; q = q + 1u) {
        rank = rank + select(0u, 1u, mb_slot[b * tp.n + q] == slot);
    }
    mb_out[b * tp.n + mb_offsets[b * (tp.nout + 1u) + slot] + rank] = t;
}

// ---- merge: out[b, o, :] = mean of y[b, t, :] over the members t of row o.
@group(0) @binding(1) var<storage, read> mg_y: array<ST>;
@group(0) @binding(2) var<storage, read> mg_offsets: array<u32>;
@group(0) @binding(3) var<storage, read> mg_members: array<u32>;
@group(0) @binding(4) var<storage, read_write> mg_out: array<ST>;   // [B, nout, C]

@compute @workgroup_size(64)
fn tome_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if (e >= tp.batch * tp.nout * tp.c) { return; }
    let ch = e % tp.c;
    let row = e / tp.c;
    let b = row / tp.nout;
    let o = row % tp.nout;
    let lo = mg_offsets[b * (tp.nout + 1u) + o];
    let hi = mg_offsets[b * (tp.nout + 1u) + o + 1u];
    var acc = 0.0;
    for (var q = lo; q < hi; q = q + 1u) {
        acc = acc + f32(mg_y[(b * tp.n + mg_members[b * tp.n + q]) * tp.c + ch]);
    }
    mg_out[e] = ST(acc / f32(max(hi - lo, 1u)));
}

// ---- unmerge plus residual: out[b, t, :] = z[b, slot[b, t], :] + res[b, t, :].
@group(0) @binding(1) var<storage, read> um_z: array<ST>;
@group(0) @binding(2) var<storage, read> um_slot: array<u32>;
@group(0) @binding(3) var<storage, read> um_res: array<ST>;
@group(0) @binding(4) var<storage, read_write> um_out: array<ST>;

@compute @workgroup_size(64)
fn tome_unmerge_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let e = linear_id(wid, nwg, lid);
    if (e >= tp.batch * tp.n * tp.c) { return; }
    let ch = e % tp.c;
    let row = e / tp.c;
    let b = row / tp.n;
    let z = f32(um_z[(b * tp.nout + um_slot[row]) * tp.c + ch]);
    um_out[e] = ST(z + f32(um_res[e]));
}
