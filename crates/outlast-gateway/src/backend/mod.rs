//! Backends run jobs. One trait; `demo` is built in, `exec` runs a command, more (ComfyUI) plug in.

pub mod comfyui;
mod context;
pub mod demo;
pub mod exec;

use std::sync::Arc;

use async_trait::async_trait;
use outlast_protocol::{Failure, JobSpec, OwnerId, UploadId};

pub use context::{EventQueue, InputFile, JobContext, JobHandle};

use crate::error::AppError;

/// What happens to a job that was running when the gateway stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Queue it again and run it from the start (safe for side-effect-free work).
    Rerun,
    /// Fail it with `interrupted` (work with side effects must not run twice unasked).
    Fail,
    /// Run it again first in line; the backend reattaches to work that went on elsewhere
    /// (a ComfyUI prompt) using its stored [`JobContext::backend_state`].
    Resume,
}

/// A job backend.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The name jobs use in `"backend"`.
    fn name(&self) -> &'static str;

    /// How many jobs may run at once.
    fn concurrency(&self) -> usize;

    /// What to do with a job interrupted by a gateway restart.
    fn restart_policy(&self) -> RestartPolicy;

    /// True when the same workflow and input contents always stand for the same result, so a
    /// completed job may answer an identical later one from its outputs (the result cache).
    /// Backends with side effects must keep the default.
    fn deterministic(&self) -> bool {
        false
    }

    /// Checks a submission cheaply before it is accepted.
    fn validate(&self, spec: &JobSpec) -> Result<(), AppError>;

    /// Why no job of this backend can start now (e.g. every server is unreachable); shown as
    /// the `reason` of queued jobs. Notify the scheduler when it changes.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// Called once with the scheduler's wake-up: notify it when [`Backend::concurrency`] grows
    /// (e.g. a server came back).
    fn attach_scheduler(&self, _wake: Arc<tokio::sync::Notify>) {}

    /// True when [`Backend::run`] watches [`JobContext::canceled`] and returns only once the
    /// job's work has really stopped (a process group gone, a ComfyUI prompt out of its
    /// queue). The runner then waits for `run` to return before it stores `canceled`, so
    /// `canceled` means stopped. Backends that keep the default are stopped by dropping `run`.
    fn confirms_cancel(&self) -> bool {
        false
    }

    /// Runs the job to completion. Shutdown (and cancellation, unless
    /// [`Backend::confirms_cancel`]) drops this future, so implementations must release what
    /// they hold on drop (e.g. kill their child process).
    async fn run(&self, ctx: &JobContext) -> Result<(), Failure>;
}

/// Whether a job input can be used now.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// The upload is complete: here is its file.
    Ready(InputFile),
    /// The upload is still receiving bytes; a job may wait for it.
    Pending {
        /// Bytes durable so far.
        offset: u64,
        /// Total size, when known.
        length: Option<u64>,
    },
}

/// Resolves a job input (an upload id) to a complete file of the same owner.
#[async_trait]
pub trait InputResolver: Send + Sync + std::fmt::Debug + 'static {
    /// The file of a complete upload; `not_found` for unknown or foreign ids, `input_not_ready`
    /// for incomplete uploads.
    async fn resolve(&self, owner: &OwnerId, upload: UploadId) -> Result<InputFile, AppError>;

    /// Like [`InputResolver::resolve`], but an upload still in progress is `Pending` instead of
    /// an error (a job may be submitted before its upload finishes).
    async fn check(&self, owner: &OwnerId, upload: UploadId) -> Result<Readiness, AppError> {
        self.resolve(owner, upload).await.map(Readiness::Ready)
    }

    /// Called once with the scheduler's wake-up: notify it whenever an upload completes, fails
    /// or goes away, so jobs waiting for inputs are looked at again.
    fn watch(&self, _wake: Arc<tokio::sync::Notify>) {}
}

/// The resolver used until an upload store is configured: no upload exists.
#[derive(Debug)]
pub struct NoUploads;

#[async_trait]
impl InputResolver for NoUploads {
    async fn resolve(&self, _owner: &OwnerId, _upload: UploadId) -> Result<InputFile, AppError> {
        Err(AppError::not_found("upload"))
    }
}
