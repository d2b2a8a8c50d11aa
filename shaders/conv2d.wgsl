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

// Weight row starts of output channels co0..co0+3 (clamped to the last channel for the loads).
fn weight_rows4(co0: u32) -> vec4<u32> {
    let lm = p.cout - 1u;
    return vec4<u32>(min(co0, lm), min(co0 + 1u, lm), min(co0 + 2u, lm), min(co0 + 3u, lm)) * p.kdim;
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
    let ra0 = weight_rows4(om);
    let ra1 = weight_rows4(om + 4u);
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

// 3x3, stride-1 convolutions on CPU adapters (every UNet/VAE conv but the downsamplers and
// the 1x1 shortcuts). Each invocation computes 8 output channels x 8 neighbouring pixels of one
// output row (the engine requires Wo % 8 == 0), so for each input channel and kernel row it
// loads the 10-pixel input segment once and uses it for all 3 kernel columns: 30 input loads
// per 576 multiply-adds, against 72 in conv2d_reg8, and no im2col index arithmetic in the
// inner loop. A workgroup is 8 invocations side by side (8 channels x 64 pixels), so the
// channels and their weight loads are uniform across it: lavapipe then does one scalar load
// per weight instead of a per-lane gather. Measured on lavapipe (conv3x3 64x64x640, f32):
// 5.7-6.8 GFLOP/s against 3.6-4.8 for conv2d_reg8, alternating runs.
// Everything is written out with constant indices: a dynamically indexed local array (or a
// loop over the 8 channels) is kept in memory, and ran at 4.1 GFLOP/s; 16 channels per
// invocation spilled registers (5.9).

// Input pixel `iw` of the row starting at `row`, 0 in the padding (`inside`: known in range).
fn seg(row: u32, iw: i32, inside: bool) -> f32 {
    if (inside || (iw >= 0 && iw < i32(p.w))) { return f32(x[row + u32(iw)]); }
    return 0.0;
}

// Output channel `co`'s 3 weights of input channel/kernel row `k` (k = (ci * 3 + dy) * 3).
fn w3(co: u32, k: u32) -> vec3<f32> {
    let i = co + k;
    return vec3<f32>(f32(weight[i]), f32(weight[i + 1u]), f32(weight[i + 2u]));
}

// The 8 pixels' multiply-adds of one output channel over one kernel row: segment s0..s9.
fn row3(c: ptr<function, array<vec4<f32>, 16>>, r: u32, w: vec3<f32>, lo: vec4<f32>, mid: vec4<f32>, hi: vec2<f32>) {
    (*c)[2u * r] = (*c)[2u * r] + w.x * lo + w.y * vec4<f32>(lo.yzw, mid.x) + w.z * vec4<f32>(lo.zw, mid.xy);
    (*c)[2u * r + 1u] = (*c)[2u * r + 1u] + w.x * mid + w.y * vec4<f32>(mid.yzw, hi.x) + w.z * vec4<f32>(mid.zw, hi);
}

@compute @workgroup_size(8, 1)
fn conv2d_3x3_reg8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let tiles_m = (p.cout + 7u) / 8u;
    let t = wid.x + wid.y * nwg.x;
    if (t >= tiles_m * p.tiles_n) { return; }
    let om = (t / p.tiles_n) * 8u;
    let on = (t % p.tiles_n) * 64u + lid.x * 8u;
    // Weight row starts of the 8 output channels.
    let ra0 = weight_rows4(om);
    let ra1 = weight_rows4(om + 4u);
    // The 8 pixels: image, output row, first column (a block past the end loads the last one).
    let hw = p.ho * p.wo;
    let n = min(on, p.ndim - 8u);
    let img = n / hw;
    let pix = n % hw;
    let oh = pix / p.wo;
    let iw0 = i32(pix % p.wo) - i32(p.pad);
    // With padding <= 1 only the segment's two end pixels can fall outside the image.
    let narrow = p.pad <= 1u;
    let plane = p.h * p.w;
    var xb = img * p.cin * plane;
    var c: array<vec4<f32>, 16>;
    var k = 0u;
    for (var ci = 0u; ci < p.cin; ci = ci + 1u) {
        for (var dy = 0u; dy < 3u; dy = dy + 1u) {
            let ih = i32(oh + dy) - i32(p.pad);
            if (ih >= 0 && ih < i32(p.h)) {
                let row = xb + u32(ih) * p.w;
                let lo = vec4<f32>(seg(row, iw0, false), seg(row, iw0 + 1, narrow),
                                   seg(row, iw0 + 2, narrow), seg(row, iw0 + 3, narrow));
                let mid = vec4<f32>(seg(row, iw0 + 4, narrow), seg(row, iw0 + 5, narrow),
                                    seg(row, iw0 + 6, narrow), seg(row, iw0 + 7, narrow));
                let hi = vec2<f32>(seg(row, iw0 + 8, narrow), seg(row, iw0 + 9, false));
                row3(&c, 0u, w3(ra0.x, k), lo, mid, hi);
                row3(&c, 1u, w3(ra0.y, k), lo, mid, hi);
                row3(&c, 2u, w3(ra0.z, k), lo, mid, hi);
                row3(&c, 3u, w3(ra0.w, k), lo, mid, hi);
                row3(&c, 4u, w3(ra1.x, k), lo, mid, hi);
                row3(&c, 5u, w3(ra1.y, k), lo, mid, hi);
                row3(&c, 6u, w3(ra1.z, k), lo, mid, hi);
                row3(&c, 7u, w3(ra1.w, k), lo, mid, hi);
            }
            k = k + 3u;
        }
        xb = xb + plane;
    }
    for (var r = 0u; r < 8u; r = r + 1u) {
        store_row(om + r, on, c[2u * r]);
        store_row(om + r, on + 4u, c[2u * r + 1u]);
    }
}
