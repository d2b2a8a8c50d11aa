// Deterministic pseudo-random fills (synthetic weights for benchmarks, generated on the GPU).
// ST (the storage type) is prepended by the engine: f32, or f16 with `enable f16`.

struct FillParams {
    n: u32,
    seed: u32,
    offset: f32,
    scale: f32,
};

@group(0) @binding(0) var<uniform> fp: FillParams;
@group(0) @binding(1) var<storage, read_write> out: array<ST>;

// out[i] = offset + scale * (2 u - 1), u uniform in [0, 1) from the top 24 bits of a hash of
// (i, seed).
@compute @workgroup_size(256)
fn fill_uniform(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= fp.n) { return; }
    let u = f32(mix32(i ^ mix32(fp.seed)) >> 8u) * (1.0 / 16777216.0);
    out[i] = ST(fp.offset + fp.scale * (2.0 * u - 1.0));
}
