//! Run the engine on a wgpu device that the host application created (a desktop app that
//! already renders with wgpu): the app picks the adapter and creates the device and queue, the
//! engine works on them, and the app keeps using them for its own work.
//!
//! ```sh
//! cargo run --release --example embed_wgpu
//! ```

use atedm::{GenerateRequest, GpuContext, LoadOptions, SdxlPipeline};

fn main() -> atedm::Result<()> {
    // The host application's own setup.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| atedm::Error::NoAdapter(format!(": {e}")))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host app"),
        // Ask for what the engine can use (f16 storage, timestamps) where the adapter has it,
        // and the adapter's full limits (SD-XL's tensors are large).
        required_features: adapter.features() & GpuContext::wanted_features(),
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| atedm::Error::Gpu(e.to_string()))?;
    println!("host device on {}", adapter.get_info().name);

    // The engine on the host's device and queue.
    let ctx = GpuContext::from_wgpu(&adapter, device.clone(), queue.clone());
    let pipe = SdxlPipeline::load_demo(&ctx, &LoadOptions::default())?;
    let size = pipe.native_size();
    let req = GenerateRequest {
        prompt: "a small green circle at the right".into(),
        steps: pipe.default_steps(),
        width: size,
        height: size,
        ..Default::default()
    };
    let image = pipe.generate(&ctx, &req, |_, _| {})?;
    let rgb = image.rgb8();

    // The host keeps using its device: here it uploads the image as a texture.
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("generated image"),
        size: wgpu::Extent3d {
            width: size as u32,
            height: size as u32,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba8Unorm,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    let rgba: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    queue.write_texture(
        texture.as_image_copy(),
        &rgba,
        wgpu::TexelCopyBufferLayout {
            offset: 0,
            bytes_per_row: Some(4 * size as u32),
            rows_per_image: None,
        },
        texture.size(),
    );
    queue.submit([]);
    println!("generated {size}x{size} on the host's device and uploaded it as a texture");
    Ok(())
}
