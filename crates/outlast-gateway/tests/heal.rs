//! In-process tests of stranded-job healing: a job stored but never queued (made here by
//! creating it in the store directly, as a dropped submission used to) is queued by a resubmit
//! with its key and by the sweep (on its second look), and then runs to completion.

use std::sync::Arc;
use std::time::Duration;

use outlast_gateway::config::Config;
use outlast_gateway::gateway::{self, Gateway};
use outlast_gateway::jobs::admission::Suspects;
use outlast_gateway::jobs::{Jobs, spec_digest};
use outlast_gateway::store::Created;
use outlast_protocol::{JobId, JobSpec, JobState, OwnerId};
use serde_json::json;

async fn start() -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.uploads.min_free_bytes = 0;
    // The loop must not heal on its own: the test drives the sweep.
    config.jobs.sweep_interval = Duration::from_secs(3600);
    let gateway = gateway::build(config).await.expect("build gateway");
    (gateway, dir)
}

async fn stop(gateway: &Gateway) {
    let state = gateway.state();
    state.shutdown.cancel();
    state.jobs.stop_runners_now();
    state.tracker.close();
    tokio::time::timeout(Duration::from_secs(5), state.tracker.wait())
        .await
        .expect("background tasks end after shutdown");
}

fn spec(key: &str) -> JobSpec {
    serde_json::from_value(json!({
        "backend": "demo",
        "workflow": {"steps": 1, "step_ms": 5},
        "idempotency_key": key,
        "cache": false,
    }))
    .expect("spec")
}

/// Stores a job the way a dropped submission used to leave it: created, never queued.
async fn strand(jobs: &Jobs, owner: &OwnerId, spec: JobSpec) -> JobId {
    let digest = spec_digest(&spec);
    match jobs
        .store()
        .create(owner.clone(), spec, digest, 1)
        .await
        .expect("create")
    {
        Created::New(r) => r.snapshot.job_id,
        other => panic!("expected a new job, got {other:?}"),
    }
}

async fn state_of(jobs: &Jobs, job: JobId) -> JobState {
    jobs.store()
        .get(job)
        .await
        .expect("get")
        .expect("the job exists")
        .snapshot
        .state
}

/// Waits (bounded) for `job` to complete; the state it had at the deadline otherwise.
async fn completes(jobs: &Jobs, job: JobId) -> JobState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = state_of(jobs, job).await;
        if state.is_terminal() || tokio::time::Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_resubmit_queues_a_stranded_job() {
    let (gw, _dir) = start().await;
    let jobs = Arc::clone(&gw.state().jobs);
    let owner: OwnerId = "alice".parse().expect("owner");
    let job = strand(&jobs, &owner, spec("k1")).await;
    assert_eq!(state_of(&jobs, job).await, JobState::Queued);
    let again = jobs.submit(&owner, spec("k1")).await.expect("resubmit");
    assert_eq!((again.job_id, again.created), (job, false));
    assert_eq!(completes(&jobs, job).await, JobState::Completed);
    stop(&gw).await;
}

#[tokio::test]
async fn the_sweep_queues_a_job_it_found_stranded_twice() {
    let (gw, _dir) = start().await;
    let jobs = Arc::clone(&gw.state().jobs);
    let owner: OwnerId = "alice".parse().expect("owner");
    let job = strand(&jobs, &owner, spec("k2")).await;
    // A job that is queued properly is never a suspect.
    let fine = jobs
        .submit(&owner, spec("k3"))
        .await
        .expect("submit")
        .job_id;
    let mut suspects = Suspects::default();
    assert_eq!(
        jobs.sweep(&mut suspects).await.expect("sweep"),
        0,
        "first look"
    );
    assert_eq!(
        state_of(&jobs, job).await,
        JobState::Queued,
        "not healed yet"
    );
    assert_eq!(
        jobs.sweep(&mut suspects).await.expect("sweep"),
        1,
        "second look"
    );
    assert_eq!(completes(&jobs, job).await, JobState::Completed);
    assert_eq!(completes(&jobs, fine).await, JobState::Completed);
    assert_eq!(jobs.sweep(&mut suspects).await.expect("sweep"), 0, "healed");
    stop(&gw).await;
}
