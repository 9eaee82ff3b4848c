//! No accepted job is ever stranded: HTTP submits whose client resets the TCP connection right
//! after sending the request leave only jobs that run to their end (none stored but never
//! queued), seen through the owner's job listing.

use std::time::Duration;

use outlast_e2e::Gateway;
use outlast_protocol::{JobSnapshot, Seq};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Submits one demo job over a raw connection and resets it (SO_LINGER 0) `after` the
/// request is written, without reading the answer.
async fn submit_and_reset(
    addr: std::net::SocketAddr,
    i: usize,
    after: Duration,
) -> anyhow::Result<()> {
    // Distinct workflows: none is answered from the result cache; every one must be queued.
    let body = format!(
        r#"{{"backend":"demo","workflow":{{"steps":1,"step_ms":{}}}}}"#,
        5 + i
    );
    let request = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request.as_bytes()).await?;
    if !after.is_zero() {
        // Spreads the resets over the time the gateway takes to store a job: some land before
        // the handler starts, some while the commit runs, some after.
        tokio::time::sleep(after).await;
    }
    tcp.set_zero_linger()?;
    drop(tcp);
    Ok(())
}

async fn list(gw: &Gateway) -> anyhow::Result<Vec<JobSnapshot>> {
    #[derive(serde::Deserialize)]
    struct Listing {
        jobs: Vec<JobSnapshot>,
    }
    let r = gw.api().get("/v1/jobs?limit=1000").send().await?;
    anyhow::ensure!(r.status() == 200, "listing answered {}", r.status());
    Ok(r.json::<Listing>().await?.jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_reset_right_after_sending_leave_no_job_stranded() -> anyhow::Result<()> {
    // The sweep would heal a stranded job eventually; an hour keeps it out of this test, which
    // is about submission itself.
    let gw = Gateway::start(&["--demo-concurrency", "8", "--jobs-sweep-interval", "1h"]).await?;
    let mut resets = tokio::task::JoinSet::new();
    for i in 0..50 {
        let after = Duration::from_millis((i % 10) as u64);
        resets.spawn(submit_and_reset(gw.addr, i, after));
    }
    while let Some(done) = resets.join_next().await {
        done??;
    }
    let api = gw.api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let jobs = list(&gw).await?;
        let submitted = api
            .counter("outlast_jobs_submitted_total{backend=\"demo\"}")
            .await?;
        let unfinished: Vec<&JobSnapshot> =
            jobs.iter().filter(|j| !j.state.is_terminal()).collect();
        // Done when every job that exists is finished and every counted submission is listed
        // (a handler still running would add one later).
        if unfinished.is_empty() && jobs.len() as u64 >= submitted {
            break jobs;
        }
        if tokio::time::Instant::now() > deadline {
            let mut detail = Vec::new();
            for j in &unfinished {
                let events = api.events(j.job_id).await?;
                detail.push(format!(
                    "{} {} with {} events",
                    j.job_id,
                    j.state.as_str(),
                    events.len()
                ));
            }
            anyhow::bail!(
                "{} of {} jobs never finished (stranded?): {detail:?}; {submitted} counted",
                unfinished.len(),
                jobs.len()
            );
        }
        // Wait for news of an unfinished job instead of sleeping.
        match unfinished.first() {
            Some(j) => {
                api.poll(j.job_id, j.seq, Duration::from_millis(500))
                    .await?;
            }
            None => {
                let _ = api.metrics().await?;
            }
        }
    };
    println!("{} of 50 reset submissions were stored", jobs.len());
    anyhow::ensure!(
        !jobs.is_empty(),
        "no reset submission reached the store: the test showed nothing"
    );
    for job in &jobs {
        let events = api.events(job.job_id).await?;
        let terminal = events.iter().filter(|e| e.kind.is_terminal()).count();
        anyhow::ensure!(
            terminal == 1 && !events.is_empty() && job.seq > Seq::ZERO,
            "job {} has {} events, {terminal} terminal",
            job.job_id,
            events.len()
        );
        anyhow::ensure!(
            job.state == outlast_protocol::JobState::Completed,
            "job {} ended {}",
            job.job_id,
            job.state.as_str()
        );
    }
    Ok(())
}
