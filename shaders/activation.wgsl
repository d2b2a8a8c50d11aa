// Activations (GELU with erf, QuickGELU, SiLU) and GEGLU, one invocation per output element.
// WGSL has no erf: erfc on [0, inf) uses the Chebyshev-fitted form of Press et al., Numerical
// Recipes 6.2 (relative error < 1.2e-7 everywhere), and GELU is written through erfc so its
// negative tail keeps relative accuracy.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.

struct Params {
    n: u32,    // output elements
    act: u32,  // activation: 0 GELU (erf), 1 QuickGELU, 2 SiLU
    f: u32,    // GEGLU: output width F (input rows are 2F wide)
    _pad: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<ST>;
@group(0) @binding(2) var<storage, read_write> out: array<ST>;

// erfc(z) for z >= 0 (relative error < 1.2e-7; the f32 exp adds ~z^2 * 6e-8 relative).
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(poly - z * z);
}

// 0.5 * v * (1 + erf(v / sqrt(2))) = 0.5 * v * erfc(-v / sqrt(2)).
fn gelu(v: f32) -> f32 {
    let e = erfc_pos(abs(v) * 0.70710678118654752);
    return 0.5 * v * select(2.0 - e, e, v < 0.0);
}

// v * sigmoid(k * v), with the exponent clamped so exp never overflows.
fn x_sigmoid(v: f32, k: f32) -> f32 {
    return v / (1.0 + exp(min(-k * v, 80.0)));
}

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn activation(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    let v = f32(x[i]);
    var r: f32;
    switch p.act {
        case 0u: { r = gelu(v); }
        case 1u: { r = x_sigmoid(v, 1.702); }
        default: { r = x_sigmoid(v, 1.0); }
    }
    out[i] = ST(r);
}

// out[r, j] = x[r, j] * gelu(x[r, F + j]) for x [rows, 2F], out [rows, F].
@compute @workgroup_size(256)
fn geglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    let row = i / p.f;
    let a = row * 2u * p.f + (i - row * p.f);
    out[i] = ST(f32(x[a]) * gelu(f32(x[a + p.f])));
}
