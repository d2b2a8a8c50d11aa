// 2-D convolution (NCHW, PyTorch weight layout [Cout, Cin, kh, kw]) as an implicit GEMM:
// out[co, n] = sum_k weight[co, k] * im2col(x)[k, n] + bias[co] + residual,
// with M = Cout, N = B*Ho*Wo, K = Cin*kh*kw. Tiled like matmul.wgsl: 64x64 output tile per
// workgroup, 4x4 per invocation, K slabs of 32 in workgroup memory; the im2col gather (with
// zero padding) happens while staging the slab.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.

struct ConvParams {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,     // M
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    flags: u32,    // bit 0: add bias[co], bit 1: add residual[out index]
    kdim: u32,     // K = cin * kh * kw
    ndim: u32,     // N = batch * ho * wo
    tiles_n: u32,  // ceil(N / 64)
    _pad: u32,
};

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<ST>;
@group(0) @binding(2) var<storage, read> weight: array<ST>;
@group(0) @binding(3) var<storage, read> bias: array<ST>;     // a placeholder when unused
@group(0) @binding(4) var<storage, read> residual: array<ST>; // a placeholder when unused
@group(0) @binding(5) var<storage, read_write> out: array<ST>;

var<workgroup> a_tile: array<f32, 2048>; // TK * TM, [k][m]
var<workgroup> b_tile: array<f32, 2048>; // TK * TN, [k][n]

fn a4(i: u32) -> vec4<f32> {
    return vec4<f32>(a_tile[i], a_tile[i + 1u], a_tile[i + 2u], a_tile[i + 3u]);
}

fn b4(i: u32) -> vec4<f32> {
    return vec4<f32>(b_tile[i], b_tile[i + 1u], b_tile[i + 2u], b_tile[i + 3u]);
}

// Writes output channel `co` at 4 consecutive GEMM columns from `n0` (bounds-checked).
fn store_row(co: u32, n0: u32, v: vec4<f32>) {
    if (co >= p.cout) { return; }
    let hw = p.ho * p.wo;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let n = n0 + j;
        if (n >= p.ndim) { return; }
        let bi = n / hw;
        let o = (bi * p.cout + co) * hw + n % hw;
        var r = v[j];
        if ((p.flags & 1u) != 0u) { r = r + f32(bias[co]); }
        if ((p.flags & 2u) != 0u) { r = r + f32(residual[o]); }
        out[o] = ST(r);
    }
}

@compute @workgroup_size(16, 16)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let tiles_m = (p.cout + TM - 1u) / TM;
    let t = wid.x + wid.y * nwg.x;
    if (t >= tiles_m * p.tiles_n) { return; }
    let m0 = (t / p.tiles_n) * TM;
    let n0 = (t % p.tiles_n) * TN;

    // Each invocation stages TK/4 elements of each slab: fixed column li % 64, k = li / 64 + 4 j.
    let lm = li % TM;
    let lk = li / TM;
    let gm = m0 + lm;
    let gn = n0 + lm;
    // The output pixel of GEMM column gn, and the top-left corner of its receptive field.
    let hw = p.ho * p.wo;
    let nb = gn / hw;
    let pix = gn % hw;
    let ih0 = i32((pix / p.wo) * p.stride) - i32(p.pad);
    let iw0 = i32((pix % p.wo) * p.stride) - i32(p.pad);
    let x_base = nb * p.cin * p.h * p.w;
    let khw = p.kh * p.kw;

    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < p.kdim; k0 = k0 + TK) {
        for (var j = 0u; j < TK / 4u; j = j + 1u) {
            let kk = lk + 4u * j;
            let gk = k0 + kk;
            var av = 0.0;
            if (gm < p.cout && gk < p.kdim) { av = f32(weight[gm * p.kdim + gk]); }
            a_tile[kk * TM + lm] = av;
            var bv = 0.0;
            if (gn < p.ndim && gk < p.kdim) {
                let ci = gk / khw;
                let r = gk % khw;
                let ih = ih0 + i32(r / p.kw);
                let iw = iw0 + i32(r % p.kw);
                if (ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w)) {
                    bv = f32(x[x_base + (ci * p.h + u32(ih)) * p.w + u32(iw)]);
                }
            }
            b_tile[kk * TN + lm] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let av = a4(kk * TM + lid.y * 4u);
            let bv = b4(kk * TN + lid.x * 4u);
            acc0 = acc0 + av.x * bv;
            acc1 = acc1 + av.y * bv;
            acc2 = acc2 + av.z * bv;
            acc3 = acc3 + av.w * bv;
        }
        workgroupBarrier();
    }

    let om = m0 + lid.y * 4u;
    let on = n0 + lid.x * 4u;
    store_row(om, on, acc0);
    store_row(om + 1u, on, acc1);
    store_row(om + 2u, on, acc2);
    store_row(om + 3u, on, acc3);
}
