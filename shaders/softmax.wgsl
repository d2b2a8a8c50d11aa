// Row softmax of (x * scale) over the last dimension, numerically stable: one workgroup of 256
// invocations per row; pass 1 reduces the row max, pass 2 the sum of exp(v - max), pass 3
// writes exp(v - max) / sum. Accumulation in f32.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.

const WG: u32 = 256u;

var<workgroup> red: array<f32, 256>;

// Max (is_max) or sum of `v` over the workgroup; every invocation gets the result.
// Call from uniform control flow.
fn workgroup_reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let o = red[lid + s];
            red[lid] = select(red[lid] + o, max(red[lid], o), is_max);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier(); // `red` is reused by the next reduction
    return r;
}

struct Params {
    rows: u32,
    n: u32,      // row length (last dimension)
    scale: f32,
    _pad: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<ST>;
@group(0) @binding(2) var<storage, read_write> out: array<ST>;

@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let n = p.n;
    let base = row * n;

    // Invocations without elements contribute -max_f32 (not -inf, which WGSL need not support).
    var m = -3.4028235e38;
    for (var i = lid; i < n; i = i + WG) {
        m = max(m, f32(x[base + i]) * p.scale);
    }
    m = workgroup_reduce(lid, m, true);
    var s = 0.0;
    for (var i = lid; i < n; i = i + WG) {
        s = s + exp(f32(x[base + i]) * p.scale - m);
    }
    let inv = 1.0 / workgroup_reduce(lid, s, false);
    for (var i = lid; i < n; i = i + WG) {
        out[base + i] = ST(exp(f32(x[base + i]) * p.scale - m) * inv);
    }
}
