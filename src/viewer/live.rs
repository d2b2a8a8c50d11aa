//! Live mode: a generation on a worker thread with its own engine `GpuContext`, reporting each
//! step over a channel. The UI thread only ever polls the channel ([`LiveRun::poll`]).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::gpu::{ContextOptions, GpuContext};
use crate::pipeline::dump::{Rgb8, RunData, RunInfo, StepData};
use crate::pipeline::generate::Record;
use crate::pipeline::job::{run_job, GenerateJob, JobEvent};

/// A message from the worker.
#[derive(Debug)]
pub enum LiveMsg {
    /// The pipeline is loaded; the run is described.
    Started(Box<RunInfo>),
    /// A step finished (its latents and masks, downloaded right after it).
    Step {
        /// Index of the finished step (0-based).
        step: usize,
        /// Wall time of the step in ms (see [`GenerateOutput::step_ms`]).
        ///
        /// [`GenerateOutput::step_ms`]: crate::pipeline::generate::GenerateOutput::step_ms
        ms: f64,
        /// The step's latents, prediction of the clean latents and masks.
        data: StepData,
    },
    /// The image is decoded (and written, as `generate` does).
    Done {
        /// The run's final description (with its times filled in).
        info: Box<RunInfo>,
        /// The final image.
        image: Rgb8,
    },
    /// The generation failed.
    Failed(String),
}

/// Where a live run stands.
#[derive(Clone, Debug, PartialEq)]
pub enum LiveStatus {
    /// The worker is loading the pipeline.
    Loading,
    /// The denoising loop is running.
    Running {
        /// Steps finished so far.
        done: usize,
        /// Total number of steps of the run.
        steps: usize,
    },
    /// The image is decoded.
    Done,
    /// The run failed or was stopped; the error message.
    Failed(String),
}

/// Runs `job` on a worker thread (its own GPU context from `gpu`), every step read back and
/// reported. `wake` is called after every message (the UI requests a repaint there). Setting
/// `stop` ends the run after the current step, writing nothing.
pub fn spawn(
    job: GenerateJob,
    gpu: ContextOptions,
    stop: Arc<AtomicBool>,
    wake: impl Fn() + Send + 'static,
) -> (Receiver<LiveMsg>, JoinHandle<()>) {
    let (tx, rx) = channel();
    let handle = std::thread::Builder::new()
        .name("atedm-live".into())
        .spawn(move || {
            let send = |m: LiveMsg| {
                // The UI may be gone (window closed): nothing left to tell.
                let _ = tx.send(m);
                wake();
            };
            let result = GpuContext::new(&gpu).and_then(|ctx| {
                run_job(&ctx, &job, Record::Steps, |ev| {
                    match ev {
                        JobEvent::Started(info) => send(LiveMsg::Started(Box::new(info.clone()))),
                        JobEvent::Step(u) => send(LiveMsg::Step {
                            step: u.step,
                            ms: u.ms,
                            data: StepData {
                                latents: u.latents.map(<[f32]>::to_vec),
                                denoised: u.denoised.map(<[f32]>::to_vec),
                                masks: u.masks.to_vec(),
                            },
                        }),
                    }
                    if stop.load(Ordering::SeqCst) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
            });
            match result {
                Ok(g) => send(LiveMsg::Done {
                    info: Box::new(g.info),
                    image: g.image,
                }),
                Err(e) => send(LiveMsg::Failed(e.to_string())),
            }
        })
        .expect("spawning the generation thread");
    (rx, handle)
}

/// The UI side of a live generation.
pub struct LiveRun {
    rx: Receiver<LiveMsg>,
    _worker: JoinHandle<()>,
    /// Set when the UI side is dropped (the window closed): the worker stops after its step.
    stop: Option<Arc<AtomicBool>>,
    /// Where the run stands.
    pub status: LiveStatus,
    /// The run so far (`None` until the pipeline is loaded).
    pub run: Option<RunData>,
}

impl LiveRun {
    /// The UI side of a run started by [`spawn`]: its message channel and worker thread.
    pub fn new(rx: Receiver<LiveMsg>, worker: JoinHandle<()>) -> Self {
        LiveRun {
            rx,
            _worker: worker,
            stop: None,
            status: LiveStatus::Loading,
            run: None,
        }
    }

    /// Sets `stop` (the flag given to [`spawn`]) when this is dropped, so closing the window
    /// ends the generation after its current step instead of letting it run on.
    pub fn stop_on_drop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Applies every message waiting, without blocking; returns whether anything changed.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        loop {
            match self.rx.try_recv() {
                Ok(m) => {
                    self.apply(m);
                    changed = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if matches!(
                        self.status,
                        LiveStatus::Loading | LiveStatus::Running { .. }
                    ) {
                        self.status =
                            LiveStatus::Failed("the generation thread stopped unexpectedly".into());
                        changed = true;
                    }
                    break;
                }
            }
        }
        changed
    }

    /// Applies one message.
    pub fn apply(&mut self, m: LiveMsg) {
        match m {
            LiveMsg::Started(info) => {
                self.status = LiveStatus::Running {
                    done: 0,
                    steps: info.steps,
                };
                self.run = Some(RunData::live(*info));
            }
            LiveMsg::Step { step, ms, data } => {
                if let Some(run) = &mut self.run {
                    if run.steps.len() == step {
                        run.steps.push(data);
                        run.info.step_ms.push(ms);
                    }
                    self.status = LiveStatus::Running {
                        done: run.steps.len(),
                        steps: run.info.steps,
                    };
                }
            }
            LiveMsg::Done { info, image } => {
                if let Some(run) = &mut self.run {
                    run.info = *info;
                    run.image = Some(image);
                }
                self.status = LiveStatus::Done;
            }
            LiveMsg::Failed(e) => self.status = LiveStatus::Failed(e),
        }
    }

    /// Whether more steps will come.
    pub fn growing(&self) -> bool {
        matches!(
            self.status,
            LiveStatus::Loading | LiveStatus::Running { .. }
        )
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::SeqCst);
        }
    }
}
