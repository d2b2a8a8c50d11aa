// Normalization kernels: GroupNorm (optionally fused with SiLU) and LayerNorm.
// One workgroup of 256 invocations per normalized set (a group or a row). Two passes in f32:
// the mean first, then the variance of (x - mean), each a strided per-invocation sum followed by
// a workgroup-memory tree reduction; a third pass writes the output.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.

const WG: u32 = 256u;

var<workgroup> red: array<f32, 256>;

// Sum of `v` over the workgroup; every invocation gets the result. Call from uniform control flow.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier(); // `red` is reused by the next reduction
    return r;
}

// Clamped so exp never overflows: silu(x) = x / (1 + e^-x).
fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(min(-x, 80.0)));
}

// ------------------------------------------------------------------ GroupNorm

struct GnParams {
    n_groups: u32,  // B * groups: one workgroup each
    group_len: u32, // channels_per_group * spatial: contiguous elements of one group
    spatial: u32,   // product of the spatial dims
    cpg: u32,       // channels per group
    groups: u32,
    eps: f32,
    silu: u32,      // 1: apply SiLU to the output
    _pad: u32,
};

@group(0) @binding(0) var<uniform> gp: GnParams;
@group(0) @binding(1) var<storage, read> gx: array<ST>;
@group(0) @binding(2) var<storage, read> ggamma: array<ST>;
@group(0) @binding(3) var<storage, read> gbeta: array<ST>;
@group(0) @binding(4) var<storage, read_write> gout: array<ST>;

@compute @workgroup_size(256)
fn group_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let gi = wid.x + wid.y * nwg.x;
    if (gi >= gp.n_groups) { return; }
    let len = gp.group_len;
    let base = gi * len;
    let c0 = (gi % gp.groups) * gp.cpg;

    var s = 0.0;
    for (var i = lid; i < len; i = i + WG) {
        s = s + f32(gx[base + i]);
    }
    let mean = workgroup_sum(lid, s) / f32(len);
    var q = 0.0;
    for (var i = lid; i < len; i = i + WG) {
        let d = f32(gx[base + i]) - mean;
        q = q + d * d;
    }
    let inv = inverseSqrt(workgroup_sum(lid, q) / f32(len) + gp.eps);

    for (var i = lid; i < len; i = i + WG) {
        let c = c0 + i / gp.spatial;
        var y = (f32(gx[base + i]) - mean) * inv * f32(ggamma[c]) + f32(gbeta[c]);
        if (gp.silu != 0u) { y = silu(y); }
        gout[base + i] = ST(y);
    }
}

// ------------------------------------------------------------------ LayerNorm

struct LnParams {
    rows: u32,
    c: u32,        // normalized (last) dimension
    eps: f32,
    has_beta: u32, // 0: no bias (the beta binding then aliases gamma and is not read)
};

@group(0) @binding(0) var<uniform> lp: LnParams;
@group(0) @binding(1) var<storage, read> lx: array<ST>;
@group(0) @binding(2) var<storage, read> lgamma: array<ST>;
@group(0) @binding(3) var<storage, read> lbeta: array<ST>;
@group(0) @binding(4) var<storage, read_write> lout: array<ST>;

@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= lp.rows) { return; }
    let n = lp.c;
    let base = row * n;

    var s = 0.0;
    for (var i = lid; i < n; i = i + WG) {
        s = s + f32(lx[base + i]);
    }
    let mean = workgroup_sum(lid, s) / f32(n);
    var q = 0.0;
    for (var i = lid; i < n; i = i + WG) {
        let d = f32(lx[base + i]) - mean;
        q = q + d * d;
    }
    let inv = inverseSqrt(workgroup_sum(lid, q) / f32(n) + lp.eps);

    for (var i = lid; i < n; i = i + WG) {
        var y = (f32(lx[base + i]) - mean) * inv * f32(lgamma[i]);
        if (lp.has_beta != 0u) { y = y + f32(lbeta[i]); }
        lout[base + i] = ST(y);
    }
}
