//! Fair queue of one backend: round-robin across owners, FIFO within an owner.
//!
//! A pure data structure; the scheduler in `jobs` owns it behind a short lock.

use std::collections::{HashMap, VecDeque};

use outlast_protocol::{JobId, OwnerId};

/// Jobs waiting for one backend.
#[derive(Debug, Default)]
pub struct FairQueue {
    /// Owners with waiting jobs, in the order they will be served.
    rotation: VecDeque<OwnerId>,
    per_owner: HashMap<OwnerId, VecDeque<JobId>>,
}

impl FairQueue {
    /// Adds a job at the end of its owner's line.
    pub fn push(&mut self, owner: OwnerId, job: JobId) {
        let line = self.per_owner.entry(owner.clone()).or_default();
        if line.is_empty() {
            self.rotation.push_back(owner);
        }
        line.push_back(job);
    }

    /// Puts a job first in line (a job resumed after a restart already holds its place).
    pub fn push_front(&mut self, owner: OwnerId, job: JobId) {
        let line = self.per_owner.entry(owner.clone()).or_default();
        if !line.is_empty() {
            self.rotation.retain(|o| *o != owner);
        }
        line.push_front(job);
        self.rotation.push_front(owner);
    }

    /// Takes the next job: the first of the owner whose turn it is.
    pub fn pop(&mut self) -> Option<(OwnerId, JobId)> {
        let owner = self.rotation.pop_front()?;
        let line = self.per_owner.get_mut(&owner)?;
        let job = line.pop_front()?;
        if line.is_empty() {
            self.per_owner.remove(&owner);
        } else {
            self.rotation.push_back(owner.clone());
        }
        Some((owner, job))
    }

    /// How many jobs of `owner` wait here.
    pub fn len_of(&self, owner: &OwnerId) -> usize {
        self.per_owner.get(owner).map_or(0, VecDeque::len)
    }

    /// Removes a waiting job; false if it is not waiting here.
    pub fn remove(&mut self, owner: &OwnerId, job: JobId) -> bool {
        let Some(line) = self.per_owner.get_mut(owner) else {
            return false;
        };
        let Some(at) = line.iter().position(|j| *j == job) else {
            return false;
        };
        line.remove(at);
        if line.is_empty() {
            self.per_owner.remove(owner);
            self.rotation.retain(|o| o != owner);
        }
        true
    }

    /// Number of waiting jobs.
    pub fn len(&self) -> usize {
        self.per_owner.values().map(VecDeque::len).sum()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.rotation.is_empty()
    }

    /// Every waiting job in the order `pop` would return them; the index is the queue position.
    pub fn order(&self) -> Vec<JobId> {
        let mut lines: Vec<std::collections::vec_deque::Iter<'_, JobId>> = self
            .rotation
            .iter()
            .filter_map(|o| self.per_owner.get(o))
            .map(|l| l.iter())
            .collect();
        let mut out = Vec::with_capacity(self.len());
        while !lines.is_empty() {
            lines.retain_mut(|line| match line.next() {
                Some(job) => {
                    out.push(*job);
                    true
                }
                None => false,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> OwnerId {
        s.parse().expect("valid owner")
    }

    #[test]
    fn round_robin_across_owners_and_order_matches_pop() {
        let (a, b, c) = (owner("a"), owner("b"), owner("c"));
        let jobs: Vec<JobId> = (0..7).map(|_| JobId::random()).collect();
        let mut q = FairQueue::default();
        // a submits four jobs, then b two, then c one.
        for j in &jobs[..4] {
            q.push(a.clone(), *j);
        }
        q.push(b.clone(), jobs[4]);
        q.push(b.clone(), jobs[5]);
        q.push(c.clone(), jobs[6]);
        let order = q.order();
        assert_eq!(
            order,
            vec![
                jobs[0], jobs[4], jobs[6], jobs[1], jobs[5], jobs[2], jobs[3]
            ]
        );
        let mut popped = Vec::new();
        while let Some((_, j)) = q.pop() {
            popped.push(j);
        }
        assert_eq!(popped, order);
        assert!(q.is_empty());
    }

    #[test]
    fn remove_keeps_the_rest_in_order() {
        let (a, b) = (owner("a"), owner("b"));
        let j: Vec<JobId> = (0..3).map(|_| JobId::random()).collect();
        let mut q = FairQueue::default();
        q.push(a.clone(), j[0]);
        q.push(b.clone(), j[1]);
        q.push(a.clone(), j[2]);
        assert!(q.remove(&b, j[1]));
        assert!(!q.remove(&b, j[1]));
        assert!(!q.remove(&a, j[1]));
        assert_eq!(q.order(), vec![j[0], j[2]]);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn push_front_goes_first_without_reordering_the_rest() {
        let (a, b) = (owner("a"), owner("b"));
        let j: Vec<JobId> = (0..4).map(|_| JobId::random()).collect();
        let mut q = FairQueue::default();
        q.push(a.clone(), j[0]);
        q.push(b.clone(), j[1]);
        q.push(b.clone(), j[2]);
        q.push_front(b.clone(), j[3]);
        assert_eq!(q.order(), vec![j[3], j[0], j[1], j[2]]);
        assert_eq!(q.pop(), Some((b.clone(), j[3])));
        assert_eq!(q.pop(), Some((a, j[0])));
        assert_eq!(q.pop(), Some((b, j[1])));
    }
}
