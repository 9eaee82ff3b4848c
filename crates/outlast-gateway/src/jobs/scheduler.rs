//! The scheduler's state and decisions, without I/O: which jobs wait where (a [`FairQueue`] per
//! backend), which run, which places are new or changed since they were last announced, and
//! which jobs may start in the free slots. The job service drives it under a short std lock and
//! does the storing, publishing and spawning itself.
//!
//! A job's place is announced in two ways: the first time after it entered the queue as a
//! stored `queued` event (`Places::entered`), afterwards only live (`Places::moved`), so a queue
//! of N jobs costs O(N) stored events however often it shifts. Each announcement is a *round*;
//! rounds only grow, which lets subscribers drop a place older than one they already showed.

use std::collections::{HashMap, HashSet};

use outlast_protocol::{JobId, OwnerId, QueuePlace, UploadId};
use tokio_util::sync::CancellationToken;

use super::queue::FairQueue;

/// What [`Scheduler::place_changes`] found: places to announce, and each queue's depth.
#[derive(Debug, Default, PartialEq)]
pub struct Places {
    /// Jobs announced for the first time since they entered the queue: store their `queued`.
    pub entered: Vec<(JobId, QueuePlace)>,
    /// Jobs whose place changed since it was last announced: send it live, store nothing.
    pub moved: Vec<(JobId, QueuePlace)>,
    /// Jobs waiting per backend.
    pub depths: Vec<(&'static str, usize)>,
    /// The round these places belong to.
    pub round: u64,
}

/// A job the scheduler decided to start.
#[derive(Debug)]
pub struct Start {
    /// The job.
    pub job: JobId,
    /// Its backend.
    pub backend: &'static str,
    /// Fires when this run must stop (cancel or shutdown).
    pub token: CancellationToken,
}

/// Queues, running jobs and announced positions.
#[derive(Debug, Default)]
pub struct Scheduler {
    queues: HashMap<&'static str, FairQueue>,
    /// Every job in one of `queues` (waiting ones included), so membership is O(1) and a job
    /// is never queued twice.
    queued: HashSet<JobId>,
    running: HashMap<JobId, CancellationToken>,
    running_per_backend: HashMap<&'static str, usize>,
    /// The place last announced per queued job; a queued job missing here has not been
    /// announced since it entered the queue.
    announced: HashMap<JobId, QueuePlace>,
    /// How many announcement rounds ran.
    round: u64,
    /// Queued jobs whose inputs are still uploading: they keep their place in the queue but
    /// are passed over when slots free up.
    waiting: HashMap<JobId, Waiting>,
}

/// A queued job waiting for uploads to complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Its owner (whose uploads they are).
    pub owner: OwnerId,
    /// The uploads still in progress.
    pub uploads: Vec<UploadId>,
}

impl Waiting {
    /// The reason its place shows.
    pub fn reason(&self) -> String {
        let ids: Vec<String> = self.uploads.iter().map(ToString::to_string).collect();
        format!("waiting for input {}", ids.join(", "))
    }
}

impl Scheduler {
    /// How many jobs of `owner` are queued (on any backend; waiting for uploads included).
    pub fn queued_of(&self, owner: &OwnerId) -> usize {
        self.queues.values().map(|q| q.len_of(owner)).sum()
    }

    /// Queues `job` at the end of its owner's line; false (and nothing changes) when the
    /// scheduler already knows it, queued or running.
    pub fn enqueue(&mut self, backend: &'static str, owner: OwnerId, job: JobId) -> bool {
        if self.knows(job) {
            return false;
        }
        self.queued.insert(job);
        self.queues.entry(backend).or_default().push(owner, job);
        true
    }

    /// Queues `job` first in line (a job that resumes after a restart); false when the
    /// scheduler already knows it.
    pub fn enqueue_front(&mut self, backend: &'static str, owner: OwnerId, job: JobId) -> bool {
        if self.knows(job) {
            return false;
        }
        self.queued.insert(job);
        self.queues
            .entry(backend)
            .or_default()
            .push_front(owner, job);
        true
    }

    /// True when `job` waits in the queue of `backend`.
    pub fn is_queued(&self, backend: &str, job: JobId) -> bool {
        self.queued.contains(&job)
            && self
                .queues
                .get(backend)
                .is_some_and(|q| q.order().contains(&job))
    }

    /// True when `job` is queued (on any backend) or running: the scheduler will start it or
    /// is running it. A job the store holds unfinished but the scheduler does not know is
    /// stranded.
    pub fn knows(&self, job: JobId) -> bool {
        self.queued.contains(&job) || self.running.contains_key(&job)
    }

    /// True when `job` is running.
    pub fn is_running(&self, job: JobId) -> bool {
        self.running.contains_key(&job)
    }

    /// Marks a queued job as waiting for uploads (or, with none, as ready again).
    pub fn set_waiting(&mut self, job: JobId, waiting: Option<Waiting>) {
        match waiting {
            Some(w) if !w.uploads.is_empty() => {
                self.waiting.insert(job, w);
            }
            _ => {
                self.waiting.remove(&job);
            }
        }
    }

    /// Updates the uploads a job still waits for, if it still waits (none left: it is ready).
    pub fn refresh_waiting(&mut self, job: JobId, uploads: Vec<UploadId>) {
        if uploads.is_empty() {
            self.waiting.remove(&job);
        } else if let Some(w) = self.waiting.get_mut(&job) {
            w.uploads = uploads;
        }
    }

    /// The jobs waiting for uploads.
    pub fn waiting(&self) -> Vec<(JobId, Waiting)> {
        self.waiting.iter().map(|(j, w)| (*j, w.clone())).collect()
    }

    /// Takes `job` out of its queue and stops its run, if it has one (cancel); true when it had
    /// one (its runner then stores the terminal event).
    pub fn cancel(&mut self, backend: &str, owner: &OwnerId, job: JobId) -> bool {
        self.waiting.remove(&job);
        if let Some(queue) = self.queues.get_mut(backend) {
            queue.remove(owner, job);
        }
        self.queued.remove(&job);
        self.announced.remove(&job);
        match self.running.get(&job) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// A new announcement round: the places of jobs that entered the queue since the last round
    /// and of jobs whose place changed (each marked announced), and the depth of every queue.
    /// `reason` says why a backend cannot start anything now. With `moves` false only jobs
    /// that entered the queue are announced: a moved job keeps its last announced place (and
    /// stays moved) for a later round with `moves`, so moves between two such rounds coalesce
    /// to the newest place.
    pub fn place_changes(
        &mut self,
        reason: impl Fn(&str) -> Option<String>,
        moves: bool,
    ) -> Places {
        self.round += 1;
        let mut places = Places {
            round: self.round,
            ..Places::default()
        };
        for (backend, queue) in &self.queues {
            let order = queue.order();
            places.depths.push((*backend, order.len()));
            let why = reason(backend);
            for (i, job) in order.into_iter().enumerate() {
                let reason = match self.waiting.get(&job) {
                    Some(w) => Some(w.reason()),
                    None => why.clone(),
                };
                let place = QueuePlace {
                    position: u32::try_from(i).unwrap_or(u32::MAX),
                    reason,
                };
                match self.announced.get(&job) {
                    Some(last) if *last == place || !moves => {}
                    Some(_) => {
                        self.announced.insert(job, place.clone());
                        places.moved.push((job, place));
                    }
                    None => {
                        self.announced.insert(job, place.clone());
                        places.entered.push((job, place));
                    }
                }
            }
        }
        places
    }

    /// The place last announced for `job` (none when it is not queued, or not announced yet),
    /// and the current round: places of this round or earlier are already known.
    pub fn place_of(&self, job: JobId) -> (Option<QueuePlace>, u64) {
        (self.announced.get(&job).cloned(), self.round)
    }

    /// `job`'s `queued` event is stored already (a restart stored it with its reason): the next
    /// round announces it live only.
    pub fn mark_entered(&mut self, job: JobId, place: QueuePlace) {
        if self.queued.contains(&job) {
            self.announced.insert(job, place);
        }
    }

    /// The `queued` events of `jobs` could not be stored: the next round announces them as
    /// entering again.
    pub fn forget_entered(&mut self, jobs: impl IntoIterator<Item = JobId>) {
        for job in jobs {
            self.announced.remove(&job);
        }
    }

    /// Starts as many queued jobs as the backends' free slots allow. `slots` lists each backend
    /// with its concurrency; `token` makes the stop token of each run.
    pub fn take_startable(
        &mut self,
        slots: &[(&'static str, usize)],
        mut token: impl FnMut() -> CancellationToken,
    ) -> Vec<Start> {
        let mut started = Vec::new();
        for &(backend, concurrency) in slots {
            // Jobs waiting for uploads are passed over and put back where they were.
            let mut passed_over = Vec::new();
            loop {
                let running = self.running_per_backend.get(backend).copied().unwrap_or(0);
                if running >= concurrency {
                    break;
                }
                let Some((owner, job)) = self.queues.get_mut(backend).and_then(FairQueue::pop)
                else {
                    break;
                };
                if self.waiting.contains_key(&job) {
                    passed_over.push((owner, job));
                    continue;
                }
                let token = token();
                self.queued.remove(&job);
                self.running.insert(job, token.clone());
                self.announced.remove(&job);
                *self.running_per_backend.entry(backend).or_default() += 1;
                started.push(Start {
                    job,
                    backend,
                    token,
                });
            }
            if let Some(queue) = self.queues.get_mut(backend) {
                for (owner, job) in passed_over.into_iter().rev() {
                    queue.push_front(owner, job);
                }
            }
        }
        started
    }

    /// A run of `job` on `backend` ended; its slot is free.
    pub fn finished(&mut self, backend: &str, job: JobId) {
        self.running.remove(&job);
        if let Some(n) = self.running_per_backend.get_mut(backend) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(name: &str) -> OwnerId {
        name.parse().expect("owner")
    }

    fn jobs(n: usize) -> Vec<JobId> {
        (0..n).map(|_| JobId::random()).collect()
    }

    fn started(s: &mut Scheduler, slots: &[(&'static str, usize)]) -> Vec<JobId> {
        s.take_startable(slots, CancellationToken::new)
            .into_iter()
            .map(|st| st.job)
            .collect()
    }

    #[test]
    fn slots_limit_what_starts_and_owners_take_turns() {
        let mut s = Scheduler::default();
        let j = jobs(4);
        s.enqueue("demo", owner("alice"), j[0]);
        s.enqueue("demo", owner("alice"), j[1]);
        s.enqueue("demo", owner("bob"), j[2]);
        s.enqueue("demo", owner("bob"), j[3]);
        assert_eq!(started(&mut s, &[("demo", 2)]), vec![j[0], j[2]]);
        assert_eq!(started(&mut s, &[("demo", 2)]), Vec::<JobId>::new(), "full");
        s.finished("demo", j[0]);
        assert_eq!(started(&mut s, &[("demo", 2)]), vec![j[1]]);
        assert!(s.is_running(j[1]) && !s.is_running(j[0]));
        assert!(s.is_queued("demo", j[3]));
    }

    fn place(position: u32, reason: Option<&str>) -> QueuePlace {
        QueuePlace {
            position,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn a_place_is_stored_on_entry_and_sent_live_once_per_change() {
        let mut s = Scheduler::default();
        let j = jobs(3);
        for job in &j {
            s.enqueue("demo", owner("alice"), *job);
        }
        let none = |_: &str| None;
        let first = s.place_changes(none, true);
        assert_eq!(
            first.entered,
            vec![
                (j[0], place(0, None)),
                (j[1], place(1, None)),
                (j[2], place(2, None))
            ]
        );
        assert!(first.moved.is_empty());
        assert_eq!(first.depths, vec![("demo", 3)]);
        assert_eq!(s.place_of(j[2]), (Some(place(2, None)), first.round));
        let quiet = s.place_changes(none, true);
        assert!(
            quiet.entered.is_empty() && quiet.moved.is_empty(),
            "nothing moved"
        );
        assert!(quiet.round > first.round, "rounds only grow");
        assert_eq!(started(&mut s, &[("demo", 1)]), vec![j[0]]);
        assert_eq!(s.place_of(j[0]).0, None, "a running job has no place");
        let shift = s.place_changes(none, true);
        assert!(shift.entered.is_empty(), "moving up stores nothing");
        assert_eq!(
            shift.moved,
            vec![(j[1], place(0, None)), (j[2], place(1, None))]
        );
        // A reason appearing is a change even where the position stays.
        let down = |_: &str| Some("no server".to_owned());
        let changes = s.place_changes(down, true).moved;
        assert_eq!(changes.len(), 2);
        assert!(
            changes
                .iter()
                .all(|(_, p)| p.reason.as_deref() == Some("no server"))
        );
        // Entering again (a job that was lost and is queued anew) stores again.
        s.finished("demo", j[0]);
        assert!(s.enqueue("demo", owner("alice"), j[0]));
        let again = s.place_changes(down, true);
        assert_eq!(again.entered, vec![(j[0], place(2, Some("no server")))]);
        // An entry whose event could not be stored is announced as entering once more.
        s.forget_entered([j[0]]);
        assert_eq!(s.place_changes(down, true).entered.len(), 1);
    }

    #[test]
    fn moves_held_back_stay_moved_and_go_out_once_with_the_newest_place() {
        let mut s = Scheduler::default();
        let j = jobs(4);
        for job in &j[..3] {
            s.enqueue("demo", owner("alice"), *job);
        }
        let none = |_: &str| None;
        assert_eq!(s.place_changes(none, true).entered.len(), 3);
        // Two starts, each followed by a round that holds moves back; a job entering meanwhile
        // is still announced at once.
        assert_eq!(started(&mut s, &[("demo", 1)]), vec![j[0]]);
        let held = s.place_changes(none, false);
        assert!(held.moved.is_empty(), "{held:?}");
        assert_eq!(
            s.place_of(j[2]).0,
            Some(place(2, None)),
            "the last place sent"
        );
        s.enqueue("demo", owner("alice"), j[3]);
        assert_eq!(started(&mut s, &[("demo", 2)]), vec![j[1]]);
        let held = s.place_changes(none, false);
        assert_eq!(held.entered, vec![(j[3], place(1, None))]);
        assert!(held.moved.is_empty(), "{held:?}");
        // The trailing round: each moved job once, at its newest place.
        let trailing = s.place_changes(none, true);
        assert_eq!(trailing.moved, vec![(j[2], place(0, None))]);
        assert!(trailing.round > held.round);
        assert!(s.place_changes(none, true).moved.is_empty(), "sent once");
    }

    #[test]
    fn a_job_whose_entry_is_stored_already_moves_live_only() {
        let mut s = Scheduler::default();
        let j = jobs(2);
        s.enqueue("demo", owner("alice"), j[0]);
        s.enqueue_front("demo", owner("bob"), j[1]);
        s.mark_entered(j[1], place(0, Some("the gateway restarted")));
        let places = s.place_changes(|_| None, true);
        assert_eq!(places.entered, vec![(j[0], place(1, None))]);
        assert_eq!(places.moved, vec![(j[1], place(0, None))]);
        s.mark_entered(JobId::random(), place(0, None));
        assert!(
            s.place_changes(|_| None, true).moved.is_empty(),
            "unknown jobs are not marked"
        );
    }

    #[test]
    fn cancel_removes_a_queued_job_and_stops_a_running_one() {
        let mut s = Scheduler::default();
        let j = jobs(2);
        s.enqueue("demo", owner("alice"), j[0]);
        s.enqueue("demo", owner("alice"), j[1]);
        let run = s.take_startable(&[("demo", 1)], CancellationToken::new);
        let token = run[0].token.clone();
        s.cancel("demo", &owner("alice"), j[0]);
        assert!(token.is_cancelled());
        s.cancel("demo", &owner("alice"), j[1]);
        assert!(!s.is_queued("demo", j[1]));
        s.finished("demo", j[0]);
        assert!(started(&mut s, &[("demo", 1)]).is_empty());
    }

    #[test]
    fn a_job_waiting_for_its_upload_keeps_its_place_without_a_slot() {
        let mut s = Scheduler::default();
        let j = jobs(2);
        let upload = UploadId::random();
        s.enqueue("demo", owner("alice"), j[0]);
        s.enqueue("demo", owner("alice"), j[1]);
        let waiting = Waiting {
            owner: owner("alice"),
            uploads: vec![upload],
        };
        s.set_waiting(j[0], Some(waiting));
        let changes = s.place_changes(|_| None, true).entered;
        assert_eq!(
            changes[0],
            (
                j[0],
                QueuePlace {
                    position: 0,
                    reason: Some(format!("waiting for input {upload}"))
                }
            )
        );
        assert_eq!(started(&mut s, &[("demo", 1)]), vec![j[1]], "passed over");
        assert!(s.is_queued("demo", j[0]), "still queued, first in line");
        s.finished("demo", j[1]);
        s.set_waiting(j[0], None);
        assert_eq!(started(&mut s, &[("demo", 1)]), vec![j[0]]);
    }

    #[test]
    fn a_job_is_queued_once_and_known_until_it_finishes() {
        let mut s = Scheduler::default();
        let j = jobs(1)[0];
        assert!(!s.knows(j));
        assert!(s.enqueue("demo", owner("alice"), j));
        assert!(!s.enqueue("demo", owner("alice"), j), "already queued");
        assert!(
            !s.enqueue_front("demo", owner("alice"), j),
            "already queued"
        );
        assert_eq!(s.place_changes(|_| None, true).depths, vec![("demo", 1)]);
        assert_eq!(started(&mut s, &[("demo", 1)]), vec![j]);
        assert!(s.knows(j) && !s.is_queued("demo", j));
        assert!(!s.enqueue("demo", owner("alice"), j), "running");
        s.finished("demo", j);
        assert!(!s.knows(j));
        assert!(
            s.enqueue("demo", owner("alice"), j),
            "a lost job may be queued again"
        );
        s.cancel("demo", &owner("alice"), j);
        assert!(!s.knows(j));
    }

    #[test]
    fn a_resumed_job_goes_first_in_line() {
        let mut s = Scheduler::default();
        let j = jobs(2);
        s.enqueue("comfyui", owner("alice"), j[0]);
        s.enqueue_front("comfyui", owner("bob"), j[1]);
        assert_eq!(started(&mut s, &[("comfyui", 1)]), vec![j[1]]);
    }

    #[test]
    fn each_backend_has_its_own_slots() {
        let mut s = Scheduler::default();
        let j = jobs(3);
        s.enqueue("demo", owner("alice"), j[0]);
        s.enqueue("exec", owner("alice"), j[1]);
        s.enqueue("exec", owner("alice"), j[2]);
        let mut got = started(&mut s, &[("demo", 1), ("exec", 1)]);
        got.sort_unstable_by_key(|j| j.to_string());
        let mut want = vec![j[0], j[1]];
        want.sort_unstable_by_key(|j| j.to_string());
        assert_eq!(got, want);
    }
}
