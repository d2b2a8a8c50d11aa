// Row gather / scatter over the token axis (AT-EDM pruning and recovery).
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.
// Rows are [B, N, C] (token-major); idx is u32 [B, k].

struct RowParams {
    batch: u32,
    n: u32,      // rows of the full tensor (src of gather, dst of scatter)
    k: u32,      // rows of the compact tensor (and indices per batch)
    c: u32,      // channels per row
};

@group(0) @binding(0) var<uniform> rp: RowParams;

// out[b, j, :] = src[b, idx[b, j], :]; an index >= N gives a zero row.
@group(0) @binding(1) var<storage, read> g_src: array<ST>;
@group(0) @binding(2) var<storage, read> g_idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> g_out: array<ST>;

@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (e >= rp.batch * rp.k * rp.c) { return; }
    let row = e / rp.c;           // b * k + j
    let b = row / rp.k;
    let src_row = g_idx[row];
    if (src_row >= rp.n) {
        g_out[e] = ST(0.0);
        return;
    }
    g_out[e] = g_src[(b * rp.n + src_row) * rp.c + e % rp.c];
}

// dst[b, idx[b, j], :] = src[b, j, :]; an index >= N is skipped.
@group(0) @binding(1) var<storage, read_write> s_dst: array<ST>;
@group(0) @binding(2) var<storage, read> s_idx: array<u32>;
@group(0) @binding(3) var<storage, read> s_src: array<ST>;

@compute @workgroup_size(256)
fn scatter_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (e >= rp.batch * rp.k * rp.c) { return; }
    let row = e / rp.c;
    let b = row / rp.k;
    let dst_row = s_idx[row];
    if (dst_row >= rp.n) { return; }
    s_dst[(b * rp.n + dst_row) * rp.c + e % rp.c] = s_src[e];
}
