// Sinusoidal timestep embedding (diffusers' get_timestep_embedding), one invocation per output
// element. The host computes the frequency table exp(-ln(max_period) * k / (half - shift)) in f64
// and rounds it to f32; the kernel forms the f32 argument t * freq (as diffusers does in f32) and
// evaluates sin/cos itself: WGSL's builtins guarantee only 2^-11 absolute error and only on
// [-pi, pi], while arguments reach thousands of radians.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.

const MAX_HALF: u32 = 1024u;

struct Params {
    rows: u32,  // B
    dim: u32,   // output width
    half: u32,  // dim / 2
    flip: u32,  // 1: [cos, sin], 0: [sin, cos]
    freq: array<vec4<f32>, 256>, // MAX_HALF frequencies (the first `half` are used)
};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<ST>;

// (sin x, cos x) in f32 for |x| < ~6400: Cody-Waite reduction by pi/2 with a three-part constant
// (the first two parts have 12 significant bits, so n * part is exact for |n| < 4096), then
// Taylor polynomials on [-pi/4, pi/4] (truncation error < 1e-11).
fn sincos(x: f32) -> vec2<f32> {
    let n = round(x * 0.63661977236758134);
    var r = x - n * 1.57080078125;
    r = r - n * -4.453584551811218e-06;
    r = r - n * -8.705516307827565e-10;
    let r2 = r * r;
    let s = r + r * r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0
        + r2 * (1.0 / 362880.0 + r2 * (-1.0 / 39916800.0)))));
    let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0
        + r2 * (-1.0 / 3628800.0 + r2 * (1.0 / 479001600.0))))));
    switch i32(n) & 3 {
        case 0: { return vec2<f32>(s, c); }
        case 1: { return vec2<f32>(c, -s); }
        case 2: { return vec2<f32>(-s, -c); }
        default: { return vec2<f32>(-c, s); }
    }
}

@compute @workgroup_size(256)
fn timestep_embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.rows * p.dim) { return; }
    let row = i / p.dim;
    let j = i - row * p.dim;
    if (j >= 2u * p.half) { // odd dim: zero padding column
        out[i] = ST(0.0);
        return;
    }
    let second = j >= p.half;
    let k = select(j, j - p.half, second);
    let sc = sincos(t[row] * p.freq[k / 4u][k % 4u]);
    // First half: sin (cos when flipped); second half: the other one.
    out[i] = ST(select(sc.x, sc.y, second != (p.flip != 0u)));
}
