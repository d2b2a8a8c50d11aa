//! Offscreen rendering of egui UIs with `egui_wgpu::Renderer` on the engine's device: for tests
//! and screenshots without a window (lavapipe works).

use eframe::egui;
use eframe::egui_wgpu::{Renderer, RendererOptions, ScreenDescriptor};
use eframe::wgpu;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;

const FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

/// An egui context drawing into an offscreen RGBA8 texture.
pub struct Headless<'a> {
    gpu: &'a GpuContext,
    /// The egui context the frames run in.
    pub ctx: egui::Context,
    renderer: Renderer,
    target: wgpu::Texture,
    /// Size in pixels.
    pub size: [u32; 2],
    /// Physical pixels per egui point (the UI scale).
    pub pixels_per_point: f32,
    /// The UI clock, seconds.
    pub time: f64,
}

impl<'a> Headless<'a> {
    /// A `width x height` pixel target on `gpu`'s device.
    pub fn new(
        gpu: &'a GpuContext,
        width: u32,
        height: u32,
        pixels_per_point: f32,
    ) -> Result<Self> {
        let device = &gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let target = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("viewer offscreen"),
            size: wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: FORMAT,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let renderer = Renderer::new(device, FORMAT, RendererOptions::PREDICTABLE);
        check(scope, "creating the offscreen target")?;
        let ctx = egui::Context::default();
        ctx.set_visuals(egui::Visuals::dark());
        Ok(Headless {
            gpu,
            ctx,
            renderer,
            target,
            size: [width, height],
            pixels_per_point,
            time: 0.0,
        })
    }

    /// Runs one egui frame of `ui` with `events` as input at `self.time`, and renders it.
    pub fn frame(
        &mut self,
        events: Vec<egui::Event>,
        mut ui: impl FnMut(&mut egui::Ui),
    ) -> Result<()> {
        let ppp = self.pixels_per_point;
        let mut input = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(self.size[0] as f32, self.size[1] as f32) / ppp,
            )),
            time: Some(self.time),
            events,
            focused: true,
            max_texture_side: Some(self.gpu.limits().max_texture_dimension_2d as usize),
            ..Default::default()
        };
        input
            .viewports
            .entry(egui::ViewportId::ROOT)
            .or_default()
            .native_pixels_per_point = Some(ppp);
        let egui::FullOutput {
            shapes,
            mut textures_delta,
            pixels_per_point,
            ..
        } = self.ctx.run_ui(input, |u| ui(u));
        let jobs = self.ctx.tessellate(shapes, pixels_per_point);
        let (device, queue) = (&self.gpu.device, &self.gpu.queue);
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        for (id, deltas) in &textures_delta.set {
            for delta in deltas {
                self.renderer.update_texture(device, queue, *id, delta);
            }
        }
        let screen = ScreenDescriptor {
            size_in_pixels: self.size,
            pixels_per_point,
        };
        let mut encoder = device.create_command_encoder(&Default::default());
        let extra = self
            .renderer
            .update_buffers(device, queue, &mut encoder, &jobs, &screen);
        {
            let view = self.target.create_view(&Default::default());
            let mut pass = encoder
                .begin_render_pass(&wgpu::RenderPassDescriptor {
                    label: Some("viewer offscreen"),
                    color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                        view: &view,
                        depth_slice: None,
                        resolve_target: None,
                        ops: wgpu::Operations {
                            load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                            store: wgpu::StoreOp::Store,
                        },
                    })],
                    depth_stencil_attachment: None,
                    timestamp_writes: None,
                    occlusion_query_set: None,
                    multiview_mask: None,
                })
                .forget_lifetime();
            self.renderer.render(&mut pass, &jobs, &screen);
        }
        queue.submit(extra.into_iter().chain([encoder.finish()]));
        for id in &textures_delta.free {
            self.renderer.free_texture(id);
        }
        // Applied (epaint asserts in debug builds that no delta is dropped unhandled).
        textures_delta.clear();
        check(scope, "rendering the viewer offscreen")
    }

    /// The last frame's pixels, RGBA8 row-major (`size[0] x size[1]`).
    pub fn read_rgba(&self) -> Result<Vec<u8>> {
        let [w, h] = self.size;
        let row = (w * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT)
            * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let device = &self.gpu.device;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("viewer readback"),
            size: u64::from(row * h),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_texture_to_buffer(
            self.target.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(row),
                    rows_per_image: Some(h),
                },
            },
            wgpu::Extent3d {
                width: w,
                height: h,
                depth_or_array_layers: 1,
            },
        );
        self.gpu.queue.submit([encoder.finish()]);
        check(scope, "copying the screenshot")?;
        let (tx, rx) = std::sync::mpsc::channel();
        buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the screenshot: {e}")))?;
        rx.recv()
            .map_err(|e| Error::Gpu(format!("screenshot readback: {e}")))?
            .map_err(|e| Error::Gpu(format!("screenshot readback: {e}")))?;
        let data = buffer
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("screenshot readback: {e}")))?;
        let mut out = Vec::with_capacity((w * h * 4) as usize);
        for y in 0..h as usize {
            let start = y * row as usize;
            out.extend_from_slice(&data[start..start + (w * 4) as usize]);
        }
        drop(data);
        buffer.unmap();
        Ok(out)
    }
}

/// The validation error caught by `scope`, if any, as an error about `what`.
fn check(scope: wgpu::ErrorScopeGuard, what: &str) -> Result<()> {
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(Error::Gpu(format!("{what}: {e}"))),
        None => Ok(()),
    }
}

/// Renders the viewer on `runs` offscreen at `step` (default: the last step) and returns the
/// frame as RGBA8 `width x height`: `atedm view --screenshot`, for documentation and machines
/// without a display.
pub fn screenshot(
    gpu: &GpuContext,
    runs: Vec<crate::pipeline::dump::RunData>,
    step: Option<usize>,
    width: u32,
    height: u32,
) -> Result<Vec<u8>> {
    let mut app = crate::viewer::ViewerApp::new(runs, None);
    let mut hl = Headless::new(gpu, width, height, 1.0)?;
    // The first frame lays out and learns the step count; then go to the step and settle.
    hl.frame(vec![], |ui| app.draw(ui))?;
    let last = app.state.available.saturating_sub(1);
    let want = step.unwrap_or(last);
    if want > last {
        return Err(crate::error::Error::Invalid(format!(
            "--step {want}: the runs have steps 0..={last}"
        )));
    }
    app.state.step = want;
    app.state.playing = false;
    for _ in 0..2 {
        hl.time += 0.1;
        hl.frame(vec![], |ui| app.draw(ui))?;
    }
    hl.read_rgba()
}
