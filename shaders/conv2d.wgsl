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

// im2col element: x at (ih, iw) of plane `base` (channel offset included), 0 in the padding.
fn xval(base: u32, ih: i32, iw: i32) -> f32 {
    if (ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w)) {
        return f32(x[base + u32(ih) * p.w + u32(iw)]);
    }
    return 0.0;
}

// Register-blocked variant for CPU adapters: 8x8 invocations over a 64x64 output tile, each 8
// output channels x 8 GEMM columns, operands read straight from storage (no workgroup memory,
// no barriers). 64 multiply-adds per 16 loaded elements; on lavapipe storage loads, not
// arithmetic, set the speed (see matmul.wgsl's matmul_reg8).
@compute @workgroup_size(8, 8)
fn conv2d_reg8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let tiles_m = (p.cout + 63u) / 64u;
    let t = wid.x + wid.y * nwg.x;
    if (t >= tiles_m * p.tiles_n) { return; }
    let om = (t / p.tiles_n) * 64u + lid.y * 8u;
    let on = (t % p.tiles_n) * 64u + lid.x * 8u;
    let lm = p.cout - 1u;
    let ra0 = vec4<u32>(min(om, lm), min(om + 1u, lm), min(om + 2u, lm), min(om + 3u, lm)) * p.kdim;
    let ra1 = vec4<u32>(min(om + 4u, lm), min(om + 5u, lm), min(om + 6u, lm), min(om + 7u, lm)) * p.kdim;
    // The 8 GEMM columns (clamped to the last one): image base and receptive-field corner.
    let hw = p.ho * p.wo;
    let chw = p.cin * p.h * p.w;
    var base: array<u32, 8>;
    var ih0: array<i32, 8>;
    var iw0: array<i32, 8>;
    for (var j = 0u; j < 8u; j = j + 1u) {
        let n = min(on + j, p.ndim - 1u);
        let pix = n % hw;
        base[j] = (n / hw) * chw;
        ih0[j] = i32((pix / p.wo) * p.stride) - i32(p.pad);
        iw0[j] = i32((pix % p.wo) * p.stride) - i32(p.pad);
    }
    let khw = p.kh * p.kw;
    var c00 = vec4<f32>(); var c01 = vec4<f32>();
    var c10 = vec4<f32>(); var c11 = vec4<f32>();
    var c20 = vec4<f32>(); var c21 = vec4<f32>();
    var c30 = vec4<f32>(); var c31 = vec4<f32>();
    var c40 = vec4<f32>(); var c41 = vec4<f32>();
    var c50 = vec4<f32>(); var c51 = vec4<f32>();
    var c60 = vec4<f32>(); var c61 = vec4<f32>();
    var c70 = vec4<f32>(); var c71 = vec4<f32>();
    for (var k = 0u; k < p.kdim; k = k + 1u) {
        let ci = k / khw;
        let r = k % khw;
        let dy = i32(r / p.kw);
        let dx = i32(r % p.kw);
        let plane = ci * p.h * p.w;
        let a0 = vec4<f32>(f32(weight[ra0.x + k]), f32(weight[ra0.y + k]), f32(weight[ra0.z + k]), f32(weight[ra0.w + k]));
        let a1 = vec4<f32>(f32(weight[ra1.x + k]), f32(weight[ra1.y + k]), f32(weight[ra1.z + k]), f32(weight[ra1.w + k]));
        let b0 = vec4<f32>(xval(base[0] + plane, ih0[0] + dy, iw0[0] + dx), xval(base[1] + plane, ih0[1] + dy, iw0[1] + dx),
                           xval(base[2] + plane, ih0[2] + dy, iw0[2] + dx), xval(base[3] + plane, ih0[3] + dy, iw0[3] + dx));
        let b1 = vec4<f32>(xval(base[4] + plane, ih0[4] + dy, iw0[4] + dx), xval(base[5] + plane, ih0[5] + dy, iw0[5] + dx),
                           xval(base[6] + plane, ih0[6] + dy, iw0[6] + dx), xval(base[7] + plane, ih0[7] + dy, iw0[7] + dx));
        c00 = c00 + a0.x * b0; c01 = c01 + a0.x * b1;
        c10 = c10 + a0.y * b0; c11 = c11 + a0.y * b1;
        c20 = c20 + a0.z * b0; c21 = c21 + a0.z * b1;
        c30 = c30 + a0.w * b0; c31 = c31 + a0.w * b1;
        c40 = c40 + a1.x * b0; c41 = c41 + a1.x * b1;
        c50 = c50 + a1.y * b0; c51 = c51 + a1.y * b1;
        c60 = c60 + a1.z * b0; c61 = c61 + a1.z * b1;
        c70 = c70 + a1.w * b0; c71 = c71 + a1.w * b1;
    }
    store_row(om, on, c00); store_row(om, on + 4u, c01);
    store_row(om + 1u, on, c10); store_row(om + 1u, on + 4u, c11);
    store_row(om + 2u, on, c20); store_row(om + 2u, on + 4u, c21);
    store_row(om + 3u, on, c30); store_row(om + 3u, on + 4u, c31);
    store_row(om + 4u, on, c40); store_row(om + 4u, on + 4u, c41);
    store_row(om + 5u, on, c50); store_row(om + 5u, on + 4u, c51);
    store_row(om + 6u, on, c60); store_row(om + 6u, on + 4u, c61);
    store_row(om + 7u, on, c70); store_row(om + 7u, on + 4u, c71);
}
