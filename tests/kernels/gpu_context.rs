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

/// The async forms (context, readback, wait) give what the blocking ones give.
#[test]
fn async_forms_give_the_blocking_results() {
    let c = pollster::block_on(GpuContext::new_async(&ContextOptions::from_env())).unwrap();
    let t = Tensor::from_f32(&c, &[1.0, 2.5, -3.0], &[3], DType::F32).unwrap();
    let x = elementwise::scale(&c, &t, 2.0, 0.0).unwrap();
    pollster::block_on(c.wait_async()).unwrap();
    assert_eq!(
        pollster::block_on(x.to_f32_vec_async(&c)).unwrap(),
        x.to_f32_vec(&c).unwrap()
    );
    assert_eq!(x.to_f32_vec(&c).unwrap(), vec![2.0, 5.0, -6.0]);
    let idx = Tensor::from_u32(&c, &[7, 9], &[2]).unwrap();
    assert_eq!(
        pollster::block_on(idx.to_u32_vec_async(&c)).unwrap(),
        vec![7, 9]
    );
    assert!(pollster::block_on(t.to_u32_vec_async(&c)).is_err());
}

/// A context on a device the host application created: the engine runs on it, and the host
/// keeps using the same device and queue.
#[test]
fn a_context_runs_on_the_hosts_device() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let want = std::env::var("ATEDM_ADAPTER")
        .ok()
        .map(|a| a.to_lowercase());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let adapter = adapters
        .into_iter()
        .find(|a| {
            want.as_ref()
                .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
        })
        .expect("an adapter (run through tools/test.sh)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() & GpuContext::wanted_features(),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let c = GpuContext::from_wgpu(&adapter, device.clone(), queue.clone());
    assert_eq!(c.adapter().name, adapter.get_info().name);
    assert_eq!(
        c.supports_f16(),
        device.features().contains(wgpu::Features::SHADER_F16)
    );
    let t = Tensor::from_f32(&c, &[1.0, 2.0], &[2], DType::F32).unwrap();
    let y = elementwise::scale(&c, &t, 3.0, 1.0).unwrap();
    assert_eq!(y.to_f32_vec(&c).unwrap(), vec![4.0, 7.0]);
    // The host's own work on the same queue.
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host"),
        size: 16,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buf, 0, &[0; 16]);
    queue.submit([]);
    c.check().unwrap();
}
