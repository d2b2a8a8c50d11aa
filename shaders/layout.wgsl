// Layout kernels: concatenation, nearest 2x upsampling, last-two-dims transpose.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.

// ------------------------------------------------------------------ concat
// One dispatch per input: the input seen as [outer, src_row] lands in the output seen as
// [outer, dst_row] at column `offset`.

struct ConcatParams {
    outer: u32,
    src_row: u32,   // input's (dim size * inner)
    dst_row: u32,   // output's (dim size * inner)
    offset: u32,    // (sum of earlier inputs' dim sizes) * inner
};

@group(0) @binding(0) var<uniform> cp: ConcatParams;
@group(0) @binding(1) var<storage, read> c_src: array<ST>;
@group(0) @binding(2) var<storage, read_write> c_out: array<ST>;

@compute @workgroup_size(256)
fn concat_part(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (e >= cp.outer * cp.src_row) { return; }
    let o = e / cp.src_row;
    c_out[o * cp.dst_row + cp.offset + e % cp.src_row] = c_src[e];
}

// ------------------------------------------------------------------ nearest 2x upsample
// x [P, H, W] (P = B * C planes) -> out [P, 2H, 2W]; one invocation per output element.

struct UpParams {
    planes: u32,
    h: u32,
    w: u32,
    _pad: u32,
};

@group(0) @binding(0) var<uniform> up: UpParams;
@group(0) @binding(1) var<storage, read> u_x: array<ST>;
@group(0) @binding(2) var<storage, read_write> u_out: array<ST>;

@compute @workgroup_size(256)
fn upsample_nearest2x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * 256u + lid;
    let w2 = 2u * up.w;
    let h2 = 2u * up.h;
    if (e >= up.planes * h2 * w2) { return; }
    let x = e % w2;
    let t = e / w2;
    let y = t % h2;
    let p = t / h2;
    u_out[e] = u_x[(p * up.h + y / 2u) * up.w + x / 2u];
}

// ------------------------------------------------------------------ transpose of the last two dims
// x [batch, R, C] -> out [batch, C, R]. One workgroup per (batch, 16x16 tile): coalesced read
// of the tile into workgroup memory (padded rows against bank conflicts), coalesced write of
// its transpose.

const TT: u32 = 16u;

struct TransposeParams {
    batch: u32,
    rows: u32,
    cols: u32,
    row_tiles: u32,
    col_tiles: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
};

@group(0) @binding(0) var<uniform> tp: TransposeParams;
@group(0) @binding(1) var<storage, read> t_x: array<ST>;
@group(0) @binding(2) var<storage, read_write> t_out: array<ST>;

var<workgroup> tile: array<f32, 272>;   // TT x (TT + 1)

@compute @workgroup_size(16, 16)
fn transpose_last2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let wg = wid.x + wid.y * nwg.x;
    if (wg >= tp.batch * tp.row_tiles * tp.col_tiles) { return; }
    let ct = wg % tp.col_tiles;
    let t = wg / tp.col_tiles;
    let rt = t % tp.row_tiles;
    let b = t / tp.row_tiles;
    let base = b * tp.rows * tp.cols;
    // read x[b, rt*TT + ly, ct*TT + lx]
    let r = rt * TT + lid.y;
    let c = ct * TT + lid.x;
    if (r < tp.rows && c < tp.cols) {
        tile[lid.y * (TT + 1u) + lid.x] = f32(t_x[base + r * tp.cols + c]);
    }
    workgroupBarrier();
    // write out[b, ct*TT + ly, rt*TT + lx] = x[b, rt*TT + lx, ct*TT + ly]
    let oc = ct * TT + lid.y;
    let orow = rt * TT + lid.x;
    if (oc < tp.cols && orow < tp.rows) {
        t_out[base + oc * tp.rows + orow] = ST(tile[lid.x * (TT + 1u) + lid.y]);
    }
}
