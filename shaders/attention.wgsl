// Multi-head attention softmax(Q K^T * scale) V, flash style (online softmax over key tiles
// staged in workgroup memory; no N x N buffer), and the head-mean attention map pass.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.
//
// Layout: q [B, Nq, H*D], k and v [B, Nk, H*D], token-major with heads interleaved
// (channel = head * D + c). Everything accumulates in f32.

const TQ: u32 = 64u;         // queries per flash workgroup (one per invocation)
const TQ_SMALL: u32 = 8u;    // ... for few queries on CPU adapters (flash_attention_q8)
const MAX_D: u32 = 128u;     // largest head_dim (private accumulator size)
const TILE_FLOATS: u32 = 2048u; // each workgroup tile: key_tile * head_dim <= 2048 floats (8 KiB)
const MT: u32 = 16u;         // map pass tile: MT queries x MT keys, MT*MT invocations

struct AttnParams {
    batch: u32,
    nq: u32,
    nk: u32,
    heads: u32,
    head_dim: u32,
    width: u32,     // heads * head_dim
    key_tile: u32,  // keys per staged tile in the flash pass (TILE_FLOATS / head_dim, capped)
    causal: u32,    // 1: key j > query i is masked
    scale: f32,
    q_tiles: u32,   // query tiles (TQ for flash, MT for the map pass)
    k_tiles: u32,   // key tiles of the map pass
    _pad: u32,
};

@group(0) @binding(0) var<uniform> ap: AttnParams;

// Both passes share these two 8 KiB tiles (16 KiB of workgroup memory in all).
var<workgroup> tile_a: array<f32, 2048>;
var<workgroup> tile_b: array<f32, 2048>;

// ------------------------------------------------------------------ flash pass

@group(0) @binding(1) var<storage, read> q: array<ST>;
@group(0) @binding(2) var<storage, read> k: array<ST>;
@group(0) @binding(3) var<storage, read> v: array<ST>;
@group(0) @binding(4) var<storage, read_write> o: array<ST>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;   // [B, H, Nq]

struct FlashRow {
    live: bool,
    row: u32,    // (b * H + h) * Nq + i, the lse index
    m: f32,      // running max of the scaled scores
    l: f32,      // sum of exp(s - m)
};

// Where a flash invocation works: one workgroup per (b, h, tile of `tq` queries), one query
// `i` per invocation (`live`: i < Nq; dead lanes still help stage the key tiles).
struct FlashSite {
    b: u32,
    h: u32,
    qt: u32,     // query tile
    i: u32,
    live: bool,
    row: u32,    // (b * H + h) * Nq + i, the lse index
    qbase: u32,  // offset of the query's (clamped to Nq - 1) head slice in q and o
};

// Workgroup id `wg` < flash_groups() (checked by the caller); head_dim d.
fn flash_site(wg: u32, lid: u32, tq: u32, d: u32) -> FlashSite {
    let bh = wg / ap.q_tiles;
    let b = bh / ap.heads;
    let h = bh % ap.heads;
    let qt = wg % ap.q_tiles;
    let i = qt * tq + lid;
    let qbase = (b * ap.nq + min(i, ap.nq - 1u)) * ap.width + h * d;
    return FlashSite(b, h, qt, i, i < ap.nq, bh * ap.nq + i, qbase);
}

// Workgroups of a flash pass: one per (b, h, query tile).
fn flash_groups() -> u32 {
    return ap.batch * ap.heads * ap.q_tiles;
}

// The row log-sum-exp m + ln(l) per (b, h, i), for the map pass.
fn store_lse(r: FlashRow) {
    if (r.live) {
        lse[r.row] = r.m + log(r.l);
    }
}

// Writes o for the site's query and returns its softmax statistics (any head_dim <= MAX_D).
fn flash(wg: u32, lid: u32, tq: u32) -> FlashRow {
    let d = ap.head_dim;
    let site = flash_site(wg, lid, tq, d);
    var qv: array<f32, MAX_D>;
    var acc: array<f32, MAX_D>;
    for (var c = 0u; c < d; c++) {
        qv[c] = f32(q[site.qbase + c]) * ap.scale;
        acc[c] = 0.0;
    }
    var m = -1e30;
    var l = 0.0;
    // Causal: keys past the tile's last query are masked for all of its queries.
    var kend = ap.nk;
    if (ap.causal != 0u) {
        kend = min(ap.nk, (site.qt + 1u) * tq);
    }
    for (var j0 = 0u; j0 < kend; j0 += ap.key_tile) {
        let nt = min(ap.key_tile, kend - j0);
        workgroupBarrier();
        for (var e = lid; e < nt * d; e += tq) {
            let g = (site.b * ap.nk + j0 + e / d) * ap.width + site.h * d + e % d;
            tile_a[e] = f32(k[g]);
            tile_b[e] = f32(v[g]);
        }
        workgroupBarrier();
        var jn = nt;
        if (ap.causal != 0u) {
            jn = select(min(nt, site.i + 1u - j0), 0u, site.i < j0);
        }
        for (var jj = 0u; jj < jn; jj++) {
            let kb = jj * d;
            var s = 0.0;
            for (var c = 0u; c < d; c++) {
                s += qv[c] * tile_a[kb + c];
            }
            if (s > m) {
                let corr = exp(m - s);
                l *= corr;
                for (var c = 0u; c < d; c++) {
                    acc[c] *= corr;
                }
                m = s;
            }
            let p = exp(s - m);
            l += p;
            for (var c = 0u; c < d; c++) {
                acc[c] += p * tile_b[kb + c];
            }
        }
    }
    if (site.live) {
        let inv = 1.0 / l;
        for (var c = 0u; c < d; c++) {
            o[site.qbase + c] = ST(acc[c] * inv);
        }
    }
    return FlashRow(site.live, site.row, m, l);
}

@compute @workgroup_size(64)
fn flash_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= flash_groups()) { return; }
    _ = flash(wg, lid, TQ);
}

// Tiles of 8 queries (one SIMD row of lavapipe's lanes): a pruned layer's few queries (25 of
// a 64-query tile at 256 px) would otherwise run 64-wide tiles of mostly dead lanes.
@compute @workgroup_size(8)
fn flash_attention_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= flash_groups()) { return; }
    _ = flash(wg, lid, TQ_SMALL);
}

// Same, and also stores the row log-sum-exp m + ln(l) per (b, h, i) for the map pass.
@compute @workgroup_size(64)
fn flash_attention_lse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= flash_groups()) { return; }
    store_lse(flash(wg, lid, TQ));
}

// ------------------------------------------------------------------ flash pass, head_dim 64

// SD-XL's head_dim (and CLIP's): q and the output accumulator live in 16 vec4 registers (loops
// of constant trip count that the compiler unrolls, instead of the generic pass's private
// arrays indexed by a runtime head_dim, which CPU drivers keep in scratch memory), keys are
// taken 4 at a time with one online-softmax rescale per 4 keys, and the staged K/V tiles are
// vec4. Not causal (the UNet and VAE never mask).
const KT64: u32 = 32u;  // keys per staged tile: 32 keys x 16 vec4 = 512 vec4 (8 KiB) each for K and V
var<workgroup> k4: array<vec4<f32>, 512>;
var<workgroup> v4: array<vec4<f32>, 512>;

fn load4(src_is_k: bool, g: u32) -> vec4<f32> {
    if (src_is_k) {
        return vec4<f32>(f32(k[g]), f32(k[g + 1u]), f32(k[g + 2u]), f32(k[g + 3u]));
    }
    return vec4<f32>(f32(v[g]), f32(v[g + 1u]), f32(v[g + 2u]), f32(v[g + 3u]));
}

fn flash64(wg: u32, lid: u32, tq: u32) -> FlashRow {
    let site = flash_site(wg, lid, tq, 64u);
    var qv: array<vec4<f32>, 16>;
    var acc: array<vec4<f32>, 16>;
    for (var c = 0u; c < 16u; c++) {
        let g = site.qbase + 4u * c;
        qv[c] = vec4<f32>(f32(q[g]), f32(q[g + 1u]), f32(q[g + 2u]), f32(q[g + 3u])) * ap.scale;
        acc[c] = vec4<f32>();
    }
    var m = -1e30;
    var l = 0.0;
    for (var j0 = 0u; j0 < ap.nk; j0 += KT64) {
        let nt = min(KT64, ap.nk - j0);
        workgroupBarrier();
        // All 32 key slots are staged (slots past the last key repeat it; they get p = 0).
        for (var e = lid; e < KT64 * 16u; e += tq) {
            let g = (site.b * ap.nk + j0 + min(e / 16u, nt - 1u)) * ap.width + site.h * 64u + (e % 16u) * 4u;
            k4[e] = load4(true, g);
            v4[e] = load4(false, g);
        }
        workgroupBarrier();
        for (var jj = 0u; jj < nt; jj += 4u) {
            let r0 = jj * 16u;
            var s = vec4<f32>();
            for (var c = 0u; c < 16u; c++) {
                let qc = qv[c];
                s += vec4<f32>(dot(qc, k4[r0 + c]), dot(qc, k4[r0 + 16u + c]),
                               dot(qc, k4[r0 + 32u + c]), dot(qc, k4[r0 + 48u + c]));
            }
            let valid = vec4<u32>(jj, jj + 1u, jj + 2u, jj + 3u) < vec4<u32>(nt);
            s = select(vec4<f32>(-1e30), s, valid);
            let mn = max(m, max(max(s.x, s.y), max(s.z, s.w)));
            let corr = exp(m - mn);
            let p = select(vec4<f32>(), exp(s - vec4<f32>(mn)), valid);
            l = l * corr + (p.x + p.y) + (p.z + p.w);
            for (var c = 0u; c < 16u; c++) {
                acc[c] = acc[c] * corr + p.x * v4[r0 + c] + p.y * v4[r0 + 16u + c]
                       + p.z * v4[r0 + 32u + c] + p.w * v4[r0 + 48u + c];
            }
            m = mn;
        }
    }
    if (site.live) {
        let inv = 1.0 / l;
        for (var c = 0u; c < 16u; c++) {
            let r = acc[c] * inv;
            let g = site.qbase + 4u * c;
            o[g] = ST(r.x);
            o[g + 1u] = ST(r.y);
            o[g + 2u] = ST(r.z);
            o[g + 3u] = ST(r.w);
        }
    }
    return FlashRow(site.live, site.row, m, l);
}

@compute @workgroup_size(64)
fn flash_attention_d64(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= flash_groups()) { return; }
    _ = flash64(wg, lid, TQ);
}

@compute @workgroup_size(8)
fn flash_attention_d64_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= flash_groups()) { return; }
    _ = flash64(wg, lid, TQ_SMALL);
}

@compute @workgroup_size(64)
fn flash_attention_d64_lse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= flash_groups()) { return; }
    store_lse(flash64(wg, lid, TQ));
}

// ------------------------------------------------------------------ head-mean map pass

@group(0) @binding(1) var<storage, read> mq: array<ST>;
@group(0) @binding(2) var<storage, read> mk: array<ST>;
@group(0) @binding(3) var<storage, read> mlse: array<f32>;
@group(0) @binding(4) var<storage, read_write> amap: array<ST>;  // [B, Nq, Nk]

// One workgroup per (b, tile of MT queries, tile of MT keys), one invocation per (i, j).
// Loops over heads, staging that head's Q and K rows, and accumulates exp(s - lse) / H:
// per-head probabilities are never stored.
@compute @workgroup_size(256)
fn head_mean_map(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= ap.batch * ap.q_tiles * ap.k_tiles) { return; }
    let jt = wg % ap.k_tiles;
    let t = wg / ap.k_tiles;
    let it = t % ap.q_tiles;
    let b = t / ap.q_tiles;
    let li = lid / MT;
    let lj = lid % MT;
    let i = it * MT + li;
    let j = jt * MT + lj;
    let d = ap.head_dim;
    let valid = i < ap.nq && j < ap.nk && !(ap.causal != 0u && j > i);
    var sum = 0.0;
    for (var h = 0u; h < ap.heads; h++) {
        workgroupBarrier();
        for (var e = lid; e < MT * d; e += MT * MT) {
            let r = e / d;
            let c = h * d + e % d;
            let qi = min(it * MT + r, ap.nq - 1u);
            let kj = min(jt * MT + r, ap.nk - 1u);
            tile_a[e] = f32(mq[(b * ap.nq + qi) * ap.width + c]) * ap.scale;
            tile_b[e] = f32(mk[(b * ap.nk + kj) * ap.width + c]);
        }
        workgroupBarrier();
        if (valid) {
            var s = 0.0;
            for (var c = 0u; c < d; c++) {
                s += tile_a[li * d + c] * tile_b[lj * d + c];
            }
            sum += exp(s - mlse[(b * ap.heads + h) * ap.nq + i]);
        }
    }
    if (i < ap.nq && j < ap.nk) {
        amap[(b * ap.nq + i) * ap.nk + j] = ST(sum / f32(ap.heads));
    }
}

// Map pass for CPU adapters: 8x8 invocations over a 64x64 (queries x keys) tile, each an 8x8
// block of map entries, q and k read straight from storage. Per head: the 64 scores of the
// block over head_dim (16 loads per 64 multiply-adds, where the staged pass makes 2 workgroup
// loads per multiply-add), then exp(s - lse) accumulated over heads.
fn map_row(b: u32, i: u32, j0: u32, v: vec4<f32>) {
    if (i >= ap.nq) { return; }
    for (var t = 0u; t < 4u; t++) {
        let j = j0 + t;
        if (j >= ap.nk) { return; }
        var x = v[t] / f32(ap.heads);
        if (ap.causal != 0u && j > i) { x = 0.0; }
        amap[(b * ap.nq + i) * ap.nk + j] = ST(x);
    }
}

fn map_exp(s: vec4<f32>, l: f32) -> vec4<f32> {
    return exp(s - vec4<f32>(l));
}

@compute @workgroup_size(8, 8)
fn head_mean_map_reg8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= ap.batch * ap.q_tiles * ap.k_tiles) { return; }
    let jt = wg % ap.k_tiles;
    let t = wg / ap.k_tiles;
    let it = t % ap.q_tiles;
    let b = t / ap.q_tiles;
    let i0 = it * 64u + lid.y * 8u;
    let j0 = jt * 64u + lid.x * 8u;
    let lq = ap.nq - 1u;
    let lk = ap.nk - 1u;
    let qb = b * ap.nq;
    let kb = b * ap.nk;
    let rq0 = (vec4<u32>(min(i0, lq), min(i0 + 1u, lq), min(i0 + 2u, lq), min(i0 + 3u, lq)) + vec4<u32>(qb)) * ap.width;
    let rq1 = (vec4<u32>(min(i0 + 4u, lq), min(i0 + 5u, lq), min(i0 + 6u, lq), min(i0 + 7u, lq)) + vec4<u32>(qb)) * ap.width;
    let rk0 = (vec4<u32>(min(j0, lk), min(j0 + 1u, lk), min(j0 + 2u, lk), min(j0 + 3u, lk)) + vec4<u32>(kb)) * ap.width;
    let rk1 = (vec4<u32>(min(j0 + 4u, lk), min(j0 + 5u, lk), min(j0 + 6u, lk), min(j0 + 7u, lk)) + vec4<u32>(kb)) * ap.width;
    var m00 = vec4<f32>(); var m01 = vec4<f32>();
    var m10 = vec4<f32>(); var m11 = vec4<f32>();
    var m20 = vec4<f32>(); var m21 = vec4<f32>();
    var m30 = vec4<f32>(); var m31 = vec4<f32>();
    var m40 = vec4<f32>(); var m41 = vec4<f32>();
    var m50 = vec4<f32>(); var m51 = vec4<f32>();
    var m60 = vec4<f32>(); var m61 = vec4<f32>();
    var m70 = vec4<f32>(); var m71 = vec4<f32>();
    for (var h = 0u; h < ap.heads; h++) {
        var c00 = vec4<f32>(); var c01 = vec4<f32>();
        var c10 = vec4<f32>(); var c11 = vec4<f32>();
        var c20 = vec4<f32>(); var c21 = vec4<f32>();
        var c30 = vec4<f32>(); var c31 = vec4<f32>();
        var c40 = vec4<f32>(); var c41 = vec4<f32>();
        var c50 = vec4<f32>(); var c51 = vec4<f32>();
        var c60 = vec4<f32>(); var c61 = vec4<f32>();
        var c70 = vec4<f32>(); var c71 = vec4<f32>();
        let h0 = h * ap.head_dim;
        for (var c = h0; c < h0 + ap.head_dim; c++) {
            let a0 = vec4<f32>(f32(mq[rq0.x + c]), f32(mq[rq0.y + c]), f32(mq[rq0.z + c]), f32(mq[rq0.w + c]));
            let a1 = vec4<f32>(f32(mq[rq1.x + c]), f32(mq[rq1.y + c]), f32(mq[rq1.z + c]), f32(mq[rq1.w + c]));
            let b0 = vec4<f32>(f32(mk[rk0.x + c]), f32(mk[rk0.y + c]), f32(mk[rk0.z + c]), f32(mk[rk0.w + c]));
            let b1 = vec4<f32>(f32(mk[rk1.x + c]), f32(mk[rk1.y + c]), f32(mk[rk1.z + c]), f32(mk[rk1.w + c]));
            c00 += a0.x * b0; c01 += a0.x * b1;
            c10 += a0.y * b0; c11 += a0.y * b1;
            c20 += a0.z * b0; c21 += a0.z * b1;
            c30 += a0.w * b0; c31 += a0.w * b1;
            c40 += a1.x * b0; c41 += a1.x * b1;
            c50 += a1.y * b0; c51 += a1.y * b1;
            c60 += a1.z * b0; c61 += a1.z * b1;
            c70 += a1.w * b0; c71 += a1.w * b1;
        }
        let lb = (b * ap.heads + h) * ap.nq;
        let s = ap.scale;
        let l0 = mlse[lb + min(i0, lq)];
        let l1 = mlse[lb + min(i0 + 1u, lq)];
        let l2 = mlse[lb + min(i0 + 2u, lq)];
        let l3 = mlse[lb + min(i0 + 3u, lq)];
        let l4 = mlse[lb + min(i0 + 4u, lq)];
        let l5 = mlse[lb + min(i0 + 5u, lq)];
        let l6 = mlse[lb + min(i0 + 6u, lq)];
        let l7 = mlse[lb + min(i0 + 7u, lq)];
        m00 += map_exp(c00 * s, l0); m01 += map_exp(c01 * s, l0);
        m10 += map_exp(c10 * s, l1); m11 += map_exp(c11 * s, l1);
        m20 += map_exp(c20 * s, l2); m21 += map_exp(c21 * s, l2);
        m30 += map_exp(c30 * s, l3); m31 += map_exp(c31 * s, l3);
        m40 += map_exp(c40 * s, l4); m41 += map_exp(c41 * s, l4);
        m50 += map_exp(c50 * s, l5); m51 += map_exp(c51 * s, l5);
        m60 += map_exp(c60 * s, l6); m61 += map_exp(c61 * s, l6);
        m70 += map_exp(c70 * s, l7); m71 += map_exp(c71 * s, l7);
    }
    map_row(b, i0, j0, m00); map_row(b, i0, j0 + 4u, m01);
    map_row(b, i0 + 1u, j0, m10); map_row(b, i0 + 1u, j0 + 4u, m11);
    map_row(b, i0 + 2u, j0, m20); map_row(b, i0 + 2u, j0 + 4u, m21);
    map_row(b, i0 + 3u, j0, m30); map_row(b, i0 + 3u, j0 + 4u, m31);
    map_row(b, i0 + 4u, j0, m40); map_row(b, i0 + 4u, j0 + 4u, m41);
    map_row(b, i0 + 5u, j0, m50); map_row(b, i0 + 5u, j0 + 4u, m51);
    map_row(b, i0 + 6u, j0, m60); map_row(b, i0 + 6u, j0 + 4u, m61);
    map_row(b, i0 + 7u, j0, m70); map_row(b, i0 + 7u, j0 + 4u, m71);
}
