// Batched matmul: out[b] = op(a[b]) @ op(b[b]) + bias + residual.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.
//
// Tiling: each workgroup (16x16 invocations) computes a 64x64 output tile; each invocation a
// 4x4 register block. K is walked in slabs of 32 staged in workgroup memory (f32).
// Transposes and batch broadcasting are expressed with element strides.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,      // output batch
    a_sm: u32,       // element stride of a along m
    a_sk: u32,       // ... along k
    a_sb: u32,       // ... along batch (0: broadcast)
    b_sk: u32,
    b_sn: u32,
    b_sb: u32,
    flags: u32,      // bit 0: add bias[n], bit 1: add residual[out index]
    tiles_n: u32,    // ceil(n / 64)
};

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<ST>;
@group(0) @binding(2) var<storage, read> b: array<ST>;
@group(0) @binding(3) var<storage, read> bias: array<ST>;     // a placeholder when unused
@group(0) @binding(4) var<storage, read> residual: array<ST>; // a placeholder when unused
@group(0) @binding(5) var<storage, read_write> out: array<ST>;

// Slabs stored [k][m] and [k][n] (f32).
var<workgroup> a_tile: array<f32, 2048>; // TK * TM
var<workgroup> b_tile: array<f32, 2048>; // TK * TN

fn a4(i: u32) -> vec4<f32> {
    return vec4<f32>(a_tile[i], a_tile[i + 1u], a_tile[i + 2u], a_tile[i + 3u]);
}

fn b4(i: u32) -> vec4<f32> {
    return vec4<f32>(b_tile[i], b_tile[i + 1u], b_tile[i + 2u], b_tile[i + 3u]);
}

// Writes 4 consecutive output columns of row `om` (bounds-checked), with the epilogue.
fn store_row(bi: u32, om: u32, n0: u32, v: vec4<f32>) {
    if (om >= p.m) { return; }
    for (var j = 0u; j < 4u; j = j + 1u) {
        let on = n0 + j;
        if (on >= p.n) { return; }
        let o = (bi * p.m + om) * p.n + on;
        var r = v[j];
        if ((p.flags & 1u) != 0u) { r = r + f32(bias[on]); }
        if ((p.flags & 2u) != 0u) { r = r + f32(residual[o]); }
        out[o] = ST(r);
    }
}

// The output tile of workgroup `t` in a grid of tile_m x tile_n tiles per batch entry
// (tile_n must match p.tiles_n): batch entry and first row/column; `live` is false past the
// last tile.
struct TileSite {
    live: bool,
    bi: u32,
    m0: u32,
    n0: u32,
};

fn tile_site(t: u32, tile_m: u32, tile_n: u32) -> TileSite {
    let per_batch = ((p.m + tile_m - 1u) / tile_m) * p.tiles_n;
    let r = t % per_batch;
    return TileSite(t < per_batch * p.batch, t / per_batch, (r / p.tiles_n) * tile_m,
                    (r % p.tiles_n) * tile_n);
}

// Element offsets base + stride * min(i0 + j, last) for j = 0..3: four rows (or columns) of an
// operand, clamped to the last one so that a partial block loads valid data.
fn clamped4(i0: u32, last: u32, stride: u32, base: u32) -> vec4<u32> {
    return vec4<u32>(min(i0, last), min(i0 + 1u, last), min(i0 + 2u, last), min(i0 + 3u, last)) * stride + vec4<u32>(base);
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let tiles_m = (p.m + TM - 1u) / TM;
    let per_batch = tiles_m * p.tiles_n;
    let t = wid.x + wid.y * nwg.x;
    if (t >= per_batch * p.batch) { return; }
    let bi = t / per_batch;
    let r = t % per_batch;
    let m0 = (r / p.tiles_n) * TM;
    let n0 = (r % p.tiles_n) * TN;
    let a_base = bi * p.a_sb;
    let b_base = bi * p.b_sb;

    // Each invocation stages TK/4 elements of each slab: fixed column li % 64, k = li / 64 + 4 j.
    let lm = li % TM;
    let lk = li / TM;
    let gm = m0 + lm;
    let gn = n0 + lm;

    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k0 = 0u; k0 < p.k; k0 = k0 + TK) {
        for (var j = 0u; j < TK / 4u; j = j + 1u) {
            let kk = lk + 4u * j;
            let gk = k0 + kk;
            var av = 0.0;
            if (gm < p.m && gk < p.k) { av = f32(a[a_base + gm * p.a_sm + gk * p.a_sk]); }
            a_tile[kk * TM + lm] = av;
            var bv = 0.0;
            if (gn < p.n && gk < p.k) { bv = f32(b[b_base + gk * p.b_sk + gn * p.b_sn]); }
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
    store_row(bi, om, on, acc0);
    store_row(bi, om + 1u, on, acc1);
    store_row(bi, om + 2u, on, acc2);
    store_row(bi, om + 3u, on, acc3);
}

// Register-blocked variant without workgroup memory: 8x8 invocations, each a 4x4 block of a
// 32x32 output tile, operands read straight from storage (rows/columns clamped for the loads,
// the stores bounds-checked). On CPU adapters (lavapipe) workgroup barriers are expensive and
// caches do the tiling's job, so this is the faster form there.
@compute @workgroup_size(8, 8)
fn matmul_reg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let site = tile_site(wid.x + wid.y * nwg.x, 32u, 32u);
    if (!site.live) { return; }
    let bi = site.bi;
    let om = site.m0 + lid.y * 4u;
    let on = site.n0 + lid.x * 4u;
    let ra = clamped4(om, p.m - 1u, p.a_sm, bi * p.a_sb);
    let cb = clamped4(on, p.n - 1u, p.b_sn, bi * p.b_sb);
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var k = 0u; k < p.k; k = k + 1u) {
        let ka = k * p.a_sk;
        let kb = k * p.b_sk;
        let av = vec4<f32>(f32(a[ra.x + ka]), f32(a[ra.y + ka]), f32(a[ra.z + ka]), f32(a[ra.w + ka]));
        let bv = vec4<f32>(f32(b[cb.x + kb]), f32(b[cb.y + kb]), f32(b[cb.z + kb]), f32(b[cb.w + kb]));
        acc0 = acc0 + av.x * bv;
        acc1 = acc1 + av.y * bv;
        acc2 = acc2 + av.z * bv;
        acc3 = acc3 + av.w * bv;
    }
    store_row(bi, om, on, acc0);
    store_row(bi, om + 1u, on, acc1);
    store_row(bi, om + 2u, on, acc2);
    store_row(bi, om + 3u, on, acc3);
}

// 8x8 register blocks read straight from storage, rows and columns of each block contiguous.
// 64 multiply-adds per 16 loaded elements (4 per load, 2x the 4x4 block's): on lavapipe every
// storage load is a per-lane gather, so loads per multiply-add set the speed.
// One function, four tile heights: 64, 32, 16 or 8 rows by 64 columns (8 x rows/8
// invocations). The engine picks the height that pads M least, so that a pruned layer's few
// rows (e.g. 50 kept tokens in a 64-row tile) do not cost a full tile of clamped copies.
fn reg8_block(bi: u32, om: u32, on: u32) {
    let a_base = bi * p.a_sb;
    let b_base = bi * p.b_sb;
    let ra0 = clamped4(om, p.m - 1u, p.a_sm, a_base);
    let ra1 = clamped4(om + 4u, p.m - 1u, p.a_sm, a_base);
    let cb0 = clamped4(on, p.n - 1u, p.b_sn, b_base);
    let cb1 = clamped4(on + 4u, p.n - 1u, p.b_sn, b_base);
    var c00 = vec4<f32>(); var c01 = vec4<f32>();
    var c10 = vec4<f32>(); var c11 = vec4<f32>();
    var c20 = vec4<f32>(); var c21 = vec4<f32>();
    var c30 = vec4<f32>(); var c31 = vec4<f32>();
    var c40 = vec4<f32>(); var c41 = vec4<f32>();
    var c50 = vec4<f32>(); var c51 = vec4<f32>();
    var c60 = vec4<f32>(); var c61 = vec4<f32>();
    var c70 = vec4<f32>(); var c71 = vec4<f32>();
    for (var k = 0u; k < p.k; k = k + 1u) {
        let ka = k * p.a_sk;
        let kb = k * p.b_sk;
        let a0 = vec4<f32>(f32(a[ra0.x + ka]), f32(a[ra0.y + ka]), f32(a[ra0.z + ka]), f32(a[ra0.w + ka]));
        let a1 = vec4<f32>(f32(a[ra1.x + ka]), f32(a[ra1.y + ka]), f32(a[ra1.z + ka]), f32(a[ra1.w + ka]));
        let b0 = vec4<f32>(f32(b[cb0.x + kb]), f32(b[cb0.y + kb]), f32(b[cb0.z + kb]), f32(b[cb0.w + kb]));
        let b1 = vec4<f32>(f32(b[cb1.x + kb]), f32(b[cb1.y + kb]), f32(b[cb1.z + kb]), f32(b[cb1.w + kb]));
        c00 = c00 + a0.x * b0; c01 = c01 + a0.x * b1;
        c10 = c10 + a0.y * b0; c11 = c11 + a0.y * b1;
        c20 = c20 + a0.z * b0; c21 = c21 + a0.z * b1;
        c30 = c30 + a0.w * b0; c31 = c31 + a0.w * b1;
        c40 = c40 + a1.x * b0; c41 = c41 + a1.x * b1;
        c50 = c50 + a1.y * b0; c51 = c51 + a1.y * b1;
        c60 = c60 + a1.z * b0; c61 = c61 + a1.z * b1;
        c70 = c70 + a1.w * b0; c71 = c71 + a1.w * b1;
    }
    store_row(bi, om, on, c00); store_row(bi, om, on + 4u, c01);
    store_row(bi, om + 1u, on, c10); store_row(bi, om + 1u, on + 4u, c11);
    store_row(bi, om + 2u, on, c20); store_row(bi, om + 2u, on + 4u, c21);
    store_row(bi, om + 3u, on, c30); store_row(bi, om + 3u, on + 4u, c31);
    store_row(bi, om + 4u, on, c40); store_row(bi, om + 4u, on + 4u, c41);
    store_row(bi, om + 5u, on, c50); store_row(bi, om + 5u, on + 4u, c51);
    store_row(bi, om + 6u, on, c60); store_row(bi, om + 6u, on + 4u, c61);
    store_row(bi, om + 7u, on, c70); store_row(bi, om + 7u, on + 4u, c71);
}

// Tile `t` of a grid of tile_rows x 64 tiles: workgroup (8, tile_rows / 8).
fn reg8_tile(t: u32, tile_rows: u32, lid: vec3<u32>) {
    let site = tile_site(t, tile_rows, 64u);
    if (!site.live) { return; }
    reg8_block(site.bi, site.m0 + lid.y * 8u, site.n0 + lid.x * 8u);
}

@compute @workgroup_size(8, 8)
fn matmul_reg8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    reg8_tile(wid.x + wid.y * nwg.x, 64u, lid);
}

@compute @workgroup_size(8, 4)
fn matmul_reg8_h32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    reg8_tile(wid.x + wid.y * nwg.x, 32u, lid);
}

@compute @workgroup_size(8, 2)
fn matmul_reg8_h16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    reg8_tile(wid.x + wid.y * nwg.x, 16u, lid);
}

@compute @workgroup_size(8, 1)
fn matmul_reg8_h8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>) {
    reg8_tile(wid.x + wid.y * nwg.x, 8u, lid);
}

// 10x8 register blocks (10 rows, 8 columns) in tiles of 10 rows x 64 columns, for row counts
// that 8-row blocks pad badly: AT-EDM's 50 kept rows at 256 px run as 5 blocks of 10 instead
// of 7 blocks of 8 (56 rows). 18 loads per 80 multiply-adds (8x8: 16 per 64). The
// accumulators are an array indexed by constants only, so they stay in registers.
@compute @workgroup_size(8, 1)
fn matmul_reg10(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let site = tile_site(wid.x + wid.y * nwg.x, 10u, 64u);
    if (!site.live) { return; }
    let bi = site.bi;
    let om = site.m0;
    let on = site.n0 + lid.x * 8u;
    let a_base = bi * p.a_sb;
    let b_base = bi * p.b_sb;
    let ra0 = clamped4(om, p.m - 1u, p.a_sm, a_base);
    let ra1 = clamped4(om + 4u, p.m - 1u, p.a_sm, a_base);
    let ra2 = vec2<u32>(min(om + 8u, p.m - 1u), min(om + 9u, p.m - 1u)) * p.a_sm + vec2<u32>(a_base);
    let cb0 = clamped4(on, p.n - 1u, p.b_sn, b_base);
    let cb1 = clamped4(on + 4u, p.n - 1u, p.b_sn, b_base);
    var c: array<vec4<f32>, 20>;
    for (var k = 0u; k < p.k; k = k + 1u) {
        let ka = k * p.a_sk;
        let kb = k * p.b_sk;
        let a0 = vec4<f32>(f32(a[ra0.x + ka]), f32(a[ra0.y + ka]), f32(a[ra0.z + ka]), f32(a[ra0.w + ka]));
        let a1 = vec4<f32>(f32(a[ra1.x + ka]), f32(a[ra1.y + ka]), f32(a[ra1.z + ka]), f32(a[ra1.w + ka]));
        let a2 = vec2<f32>(f32(a[ra2.x + ka]), f32(a[ra2.y + ka]));
        let b0 = vec4<f32>(f32(b[cb0.x + kb]), f32(b[cb0.y + kb]), f32(b[cb0.z + kb]), f32(b[cb0.w + kb]));
        let b1 = vec4<f32>(f32(b[cb1.x + kb]), f32(b[cb1.y + kb]), f32(b[cb1.z + kb]), f32(b[cb1.w + kb]));
        c[0u] = c[0u] + a0.x * b0; c[1u] = c[1u] + a0.x * b1;
        c[2u] = c[2u] + a0.y * b0; c[3u] = c[3u] + a0.y * b1;
        c[4u] = c[4u] + a0.z * b0; c[5u] = c[5u] + a0.z * b1;
        c[6u] = c[6u] + a0.w * b0; c[7u] = c[7u] + a0.w * b1;
        c[8u] = c[8u] + a1.x * b0; c[9u] = c[9u] + a1.x * b1;
        c[10u] = c[10u] + a1.y * b0; c[11u] = c[11u] + a1.y * b1;
        c[12u] = c[12u] + a1.z * b0; c[13u] = c[13u] + a1.z * b1;
        c[14u] = c[14u] + a1.w * b0; c[15u] = c[15u] + a1.w * b1;
        c[16u] = c[16u] + a2.x * b0; c[17u] = c[17u] + a2.x * b1;
        c[18u] = c[18u] + a2.y * b0; c[19u] = c[19u] + a2.y * b1;
    }
    store_row(bi, om + 0u, on, c[0u]); store_row(bi, om + 0u, on + 4u, c[1u]);
    store_row(bi, om + 1u, on, c[2u]); store_row(bi, om + 1u, on + 4u, c[3u]);
    store_row(bi, om + 2u, on, c[4u]); store_row(bi, om + 2u, on + 4u, c[5u]);
    store_row(bi, om + 3u, on, c[6u]); store_row(bi, om + 3u, on + 4u, c[7u]);
    store_row(bi, om + 4u, on, c[8u]); store_row(bi, om + 4u, on + 4u, c[9u]);
    store_row(bi, om + 5u, on, c[10u]); store_row(bi, om + 5u, on + 4u, c[11u]);
    store_row(bi, om + 6u, on, c[12u]); store_row(bi, om + 6u, on + 4u, c[13u]);
    store_row(bi, om + 7u, on, c[14u]); store_row(bi, om + 7u, on + 4u, c[15u]);
    store_row(bi, om + 8u, on, c[16u]); store_row(bi, om + 8u, on + 4u, c[17u]);
    store_row(bi, om + 9u, on, c[18u]); store_row(bi, om + 9u, on + 4u, c[19u]);
}
