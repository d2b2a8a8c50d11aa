//! Adapter selection, limits, buffer pool and error paths of the GPU context.

use crate::common::*;
use atedm::gpu::{ContextOptions, GpuContext};
use atedm::ops::elementwise;
use atedm::{DType, Error, Tensor};

#[test]
fn describe_names_adapter_features_and_limits() {
    let d = ctx().describe();
    for key in [
        "adapter:",
        "backend:",
        "driver:",
        "shader-f16=",
        "timestamp-query=",
        "subgroup=",
        "max_storage_buffer_binding_size",
        "max_buffer_size",
        "max_compute_workgroup_storage_size",
    ] {
        assert!(d.contains(key), "missing {key} in\n{d}");
    }
    let l = ctx().limits();
    assert!(
        l.max_storage_buffer_binding_size >= 128 << 20,
        "real limits are requested, not defaults"
    );
}

#[test]
fn unknown_adapter_and_backend_are_clear_errors() {
    let e = GpuContext::new(&ContextOptions {
        backend: None,
        adapter: Some("no-such-gpu-xyz".into()),
        plan_only: false,
    });
    let msg = e.err().expect("no adapter matches").to_string();
    assert!(
        msg.contains("no-such-gpu-xyz") && msg.contains("available"),
        "{msg}"
    );
    let e = GpuContext::new(&ContextOptions {
        backend: Some("opengl-1.0".into()),
        adapter: None,
        plan_only: false,
    });
    let msg = e.err().expect("bad backend").to_string();
    assert!(
        msg.contains("unknown backend") && msg.contains("vulkan"),
        "{msg}"
    );
}

#[test]
fn adapter_is_chosen_by_name() {
    let name = ctx().adapter().name;
    let word = name.split_whitespace().next().unwrap().to_string();
    let c = GpuContext::new(&ContextOptions {
        backend: None,
        adapter: Some(word.to_uppercase()),
        plan_only: false,
    })
    .unwrap();
    assert_eq!(c.adapter().name, name);
}

#[test]
fn tensor_above_binding_limit_is_refused_with_names() {
    let c = ctx();
    let limit = c.limits().max_storage_buffer_binding_size;
    let n = (limit / 4 + 1) as usize;
    let big = Tensor::zeros(c, &[n], DType::F32).unwrap();
    let msg = elementwise::scale(c, &big, 2.0, 0.0)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("scale")
            && msg.contains("'x")
            && msg.contains(&limit.to_string())
            && msg.contains("max_storage_buffer_binding_size"),
        "{msg}"
    );
    drop(big);
    c.trim_pool();
}

#[test]
fn buffer_above_max_buffer_size_is_refused() {
    let c = ctx();
    let n = (c.limits().max_buffer_size / 2 + 1) as usize;
    let msg = Tensor::empty(c, &[n], DType::F16).unwrap_err().to_string();
    assert!(msg.contains("max_buffer_size"), "{msg}");
}

#[test]
fn bad_tensor_data_is_an_error() {
    let c = ctx();
    assert!(Tensor::from_f32(c, &[1.0, 2.0], &[3], DType::F32).is_err());
    assert!(Tensor::empty(c, &[2, 0, 3], DType::F32).is_err());
    let t = Tensor::from_f32(c, &[1.0; 6], &[2, 3], DType::F32).unwrap();
    let msg = t.reshape(&[4, 2]).unwrap_err().to_string();
    assert!(
        msg.contains("reshape") && msg.contains("[2, 3]") && msg.contains("[4, 2]"),
        "{msg}"
    );
    assert_eq!(t.reshape(&[3, 2]).unwrap().shape(), &[3, 2]);
}

#[test]
fn round_trip_and_odd_f16_lengths() {
    let c = ctx();
    let v: Vec<f32> = (0..7).map(|i| i as f32 * 0.5 - 1.0).collect();
    for dtype in DTYPES {
        let t = Tensor::from_f32(c, &v, &[7], dtype).unwrap();
        assert_eq!(t.to_f32_vec(c).unwrap(), v, "{dtype}");
        assert_eq!(
            t.deep_clone(c).unwrap().to_f32_vec(c).unwrap(),
            v,
            "{dtype}"
        );
    }
    let z = Tensor::zeros(c, &[5], DType::F16).unwrap();
    assert_eq!(z.to_f32_vec(c).unwrap(), vec![0.0; 5]);
    let i = Tensor::from_u32(c, &[3, 1, 4], &[3]).unwrap();
    assert_eq!(i.to_u32_vec(c).unwrap(), vec![3, 1, 4]);
    assert!(i.to_f32_vec(c).is_err());
}

#[test]
fn pool_reuses_buffers() {
    // A private context so other tests' allocations don't disturb the counters.
    let c = GpuContext::new(&ContextOptions::from_env()).unwrap();
    let a = Tensor::zeros(&c, &[1000], DType::F32).unwrap();
    let s0 = c.pool_stats();
    drop(a);
    let b = Tensor::zeros(&c, &[1000], DType::F32).unwrap();
    let s1 = c.pool_stats();
    assert_eq!(
        s1.created, s0.created,
        "no new buffer for the same size class"
    );
    assert_eq!(s1.reused, s0.reused + 1);
    assert!(s1.peak_bytes >= 4000);
    drop(b);
    assert_eq!(c.pool_stats().live_bytes, 0);
    c.trim_pool();
    assert_eq!(c.pool_stats().free_bytes, 0);
}

#[test]
fn operations_after_device_loss_are_errors() {
    let c = GpuContext::new(&ContextOptions::from_env()).unwrap();
    let t = Tensor::from_f32(&c, &[1.0, 2.0], &[2], DType::F32).unwrap();
    c.destroy();
    let e = elementwise::scale(&c, &t, 1.0, 0.0).unwrap_err();
    assert!(matches!(e, Error::DeviceLost(_)), "{e}");
    assert!(matches!(
        t.to_f32_vec(&c).unwrap_err(),
        Error::DeviceLost(_)
    ));
    assert!(matches!(
        Tensor::zeros(&c, &[4], DType::F32).unwrap_err(),
        Error::DeviceLost(_)
    ));
}
