// AT-EDM pruning kernels: G-WPR power iterations on the head-mean attention map, top-k masks
// and the similarity-based recovery index. Maps are [B, N, N] row-stochastic (row = query).

struct PruneParams {
    n: u32,      // tokens
    batch: u32,
    k: u32,      // kept tokens
    c: u32,      // channels (cos_recover_index; 0 elsewhere)
};

@group(0) @binding(0) var<uniform> pp: PruneParams;

// ---- G-WPR step: s_next[b, j] = sum_i A[b, i, j] * s[b, i] (s = 1/N when `first`).
@group(0) @binding(1) var<storage, read> gw_map: array<ST>;
@group(0) @binding(2) var<storage, read> gw_s: array<f32>;
@group(0) @binding(3) var<storage, read_write> gw_out: array<f32>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn gwpr_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if (t >= pp.batch * pp.n) { return; }
    let b = t / pp.n;
    let j = t % pp.n;
    var acc = 0.0;
    for (var i = 0u; i < pp.n; i = i + 1u) {
        acc = acc + f32(gw_map[(b * pp.n + i) * pp.n + j]) * gw_s[b * pp.n + i];
    }
    gw_out[t] = acc;
}

// ---- top-k, pass 1: keep[b, j] = 1 when fewer than k tokens rank above j (higher score, or
// equal score and lower index).
@group(0) @binding(1) var<storage, read> tk_scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> tk_keep: array<u32>;

@compute @workgroup_size(64)
fn topk_flags(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if (t >= pp.batch * pp.n) { return; }
    let b = t / pp.n;
    let j = t % pp.n;
    let sj = tk_scores[t];
    var rank = 0u;
    for (var i = 0u; i < pp.n; i = i + 1u) {
        let si = tk_scores[b * pp.n + i];
        if (si > sj || (si == sj && i < j)) { rank = rank + 1u; }
    }
    tk_keep[t] = select(0u, 1u, rank < pp.k);
}

// ---- top-k, pass 2: kept indices in ascending order, idx[b, pos] = j.
@group(0) @binding(1) var<storage, read> tc_keep: array<u32>;
@group(0) @binding(2) var<storage, read_write> tc_idx: array<u32>;

@compute @workgroup_size(64)
fn topk_compact(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if (t >= pp.batch * pp.n) { return; }
    if (tc_keep[t] == 0u) { return; }
    let b = t / pp.n;
    let j = t % pp.n;
    var pos = 0u;
    for (var i = 0u; i < j; i = i + 1u) { pos = pos + tc_keep[b * pp.n + i]; }
    tc_idx[b * pp.k + pos] = j;
}

// ---- recovery index: for token i, the position in the kept list of the kept token it
// attended to most (itself when kept; ties: the lower index).
@group(0) @binding(1) var<storage, read> rc_map: array<ST>;
@group(0) @binding(2) var<storage, read> rc_idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> rc_out: array<u32>;

@compute @workgroup_size(64)
fn recover_index(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if (t >= pp.batch * pp.n) { return; }
    let b = t / pp.n;
    let i = t % pp.n;
    var best = 0u;
    var best_v = -1.0;
    for (var q = 0u; q < pp.k; q = q + 1u) {
        let j = rc_idx[b * pp.k + q];
        if (j == i) { best = q; break; }
        let v = f32(rc_map[(b * pp.n + i) * pp.n + j]);
        if (v > best_v) { best_v = v; best = q; }
    }
    rc_out[t] = best;
}

// ---- cosine recovery index (recovery cos-delta): for token i of h [B, N, C] (the states after
// block p), the position in the kept list of the kept token whose state is most cosine-similar
// to i's (itself when kept; ties: the lower position; a zero-norm kept state scores 0).
@group(0) @binding(1) var<storage, read> cr_h: array<ST>;
@group(0) @binding(2) var<storage, read> cr_idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> cr_out: array<u32>;

@compute @workgroup_size(64)
fn cos_recover_index(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let t = linear_id(wid, nwg, lid);
    if (t >= pp.batch * pp.n) { return; }
    let b = t / pp.n;
    let i = t % pp.n;
    let c = pp.c;
    for (var q = 0u; q < pp.k; q = q + 1u) {
        if (cr_idx[b * pp.k + q] == i) { cr_out[t] = q; return; }
    }
    let hi = (b * pp.n + i) * c;
    var best = 0u;
    var best_v = -3.0;
    for (var q = 0u; q < pp.k; q = q + 1u) {
        let hj = (b * pp.n + cr_idx[b * pp.k + q]) * c;
        var dot = 0.0;
        var nn = 0.0;
        for (var x = 0u; x < c; x = x + 1u) {
            let v = f32(cr_h[hj + x]);
            dot = dot + f32(cr_h[hi + x]) * v;
            nn = nn + v * v;
        }
        var v = 0.0;
        if (nn > 0.0) { v = dot * inverseSqrt(nn); }
        if (v > best_v) { best_v = v; best = q; }
    }
    cr_out[t] = best;
}
