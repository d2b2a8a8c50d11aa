// Elementwise kernels with numpy-style broadcasting (rank <= 8), and an affine scale.
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.

struct BinaryParams {
    shape: array<vec4<u32>, 2>,    // output shape, padded on the left with 1s to rank 8
    a_strides: array<vec4<u32>, 2>,// element strides of a (0 where broadcast)
    b_strides: array<vec4<u32>, 2>,
    n: u32,                        // output elements
    op: u32,                       // 0: a + alpha*b, 1: a * b, 2: a - b
    alpha: f32,
    _pad: u32,
};

@group(0) @binding(0) var<uniform> bp: BinaryParams;
@group(0) @binding(1) var<storage, read> a: array<ST>;
@group(0) @binding(2) var<storage, read> b: array<ST>;
@group(0) @binding(3) var<storage, read_write> out: array<ST>;

fn pick(v: array<vec4<u32>, 2>, i: u32) -> u32 {
    return v[i / 4u][i % 4u];
}

@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= bp.n) { return; }
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 7; d >= 0; d = d - 1) {
        let dim = pick(bp.shape, u32(d));
        let c = rem % dim;
        rem = rem / dim;
        ia = ia + c * pick(bp.a_strides, u32(d));
        ib = ib + c * pick(bp.b_strides, u32(d));
    }
    let x = f32(a[ia]);
    let y = f32(b[ib]);
    var r: f32;
    switch bp.op {
        case 0u: { r = x + bp.alpha * y; }
        case 1u: { r = x * y; }
        default: { r = x - y; }
    }
    out[i] = ST(r);
}

// y = x * scale + bias, elementwise. Its own bindings: an entry point only binds what it uses.

struct ScaleParams {
    n: u32,
    scale: f32,
    bias: f32,
    _pad: u32,
};

@group(0) @binding(0) var<uniform> sp: ScaleParams;
@group(0) @binding(1) var<storage, read> x: array<ST>;
@group(0) @binding(2) var<storage, read_write> y: array<ST>;

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= sp.n) { return; }
    y[i] = ST(f32(x[i]) * sp.scale + sp.bias);
}
