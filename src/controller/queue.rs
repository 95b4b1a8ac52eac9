//! Which due sweeps run now and which wait: at most so many at once in all, and at most so many
//! of one namespace, so that one tenant's long or stalled sweeps cannot take every slot. Pure
//! bookkeeping; the controller starts and ends the sweeps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::decide::Activity;

/// A due sweep of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub namespace: String,
    pub name: String,
    /// The resource's UID when it was found due; a resource deleted and created again under the
    /// same name is another resource.
    pub uid: String,
}

impl Ticket {
    fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    fn owned_key(&self) -> ResourceKey {
        resource_key(&self.namespace, &self.name)
    }
}

/// A resource's key in maps by resource: namespace, name.
pub type ResourceKey = (String, String);

pub fn resource_key(namespace: &str, name: &str) -> ResourceKey {
    (namespace.to_owned(), name.to_owned())
}

#[derive(Debug)]
pub struct SweepQueue {
    max_total: usize,
    max_per_namespace: usize,
    waiting: VecDeque<Ticket>,
    running: Vec<Ticket>,
    running_per_namespace: HashMap<String, usize>,
    /// Waiting sweeps that must not start yet: their `Queued` status is being written, and a
    /// sweep that started meanwhile would read the resource before that write and then find its
    /// own result refused as written over someone else's status.
    held: HashSet<ResourceKey>,
    /// When each waiting sweep was queued.
    queued_at: HashMap<ResourceKey, Instant>,
}

impl SweepQueue {
    pub fn new(max_total: usize, max_per_namespace: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_namespace: max_per_namespace.max(1),
            waiting: VecDeque::new(),
            running: Vec::new(),
            running_per_namespace: HashMap::new(),
            held: HashSet::new(),
            queued_at: HashMap::new(),
        }
    }

    /// What is happening to the resource named by `ticket`. A sweep of an earlier resource of
    /// the same name counts as running: the two must not sweep at once.
    pub fn activity(&self, ticket: &Ticket) -> Activity {
        if self.running.iter().any(|t| t.key() == ticket.key()) {
            Activity::Running
        } else if self.waiting.iter().any(|t| t == ticket) {
            Activity::Queued
        } else {
            Activity::Idle
        }
    }

    /// Queues a due sweep, unless it is queued or running already; a ticket of an earlier
    /// resource of the same name is replaced.
    pub fn enqueue(&mut self, ticket: Ticket) {
        if self.activity(&ticket) != Activity::Idle {
            return;
        }
        self.waiting.retain(|t| t.key() != ticket.key());
        self.queued_at.insert(ticket.owned_key(), Instant::now());
        self.waiting.push_back(ticket);
    }

    /// How long the sweep of `ticket` has been waiting; zero when it is not.
    pub fn waited(&self, ticket: &Ticket) -> Duration {
        self.queued_at
            .get(&ticket.owned_key())
            .map_or(Duration::ZERO, Instant::elapsed)
    }

    /// Takes a sweep that is no longer due (suspended, spec changed, deleted) out of the queue.
    pub fn withdraw(&mut self, namespace: &str, name: &str) {
        self.waiting.retain(|t| t.key() != (namespace, name));
        self.queued_at.remove(&resource_key(namespace, name));
    }

    /// The first waiting sweep that may start now: a slot is free and its namespace is under its
    /// share. It counts as running from here on.
    pub fn start_next(&mut self) -> Option<Ticket> {
        if self.running.len() >= self.max_total {
            return None;
        }
        let startable = |ticket: &Ticket| {
            self.running_per_namespace
                .get(&ticket.namespace)
                .copied()
                .unwrap_or(0)
                < self.max_per_namespace
                && !self.running.iter().any(|t| t.key() == ticket.key())
                && !self.is_held(ticket)
        };
        let index = self.waiting.iter().position(startable)?;
        let ticket = self.waiting.remove(index)?;
        self.queued_at.remove(&ticket.owned_key());
        *self
            .running_per_namespace
            .entry(ticket.namespace.clone())
            .or_default() += 1;
        self.running.push(ticket.clone());
        Some(ticket)
    }

    /// Keeps a waiting sweep from starting until [`Self::release`].
    pub fn hold(&mut self, ticket: &Ticket) {
        self.held.insert(ticket.owned_key());
    }

    pub fn release(&mut self, ticket: &Ticket) {
        self.held.remove(&ticket.owned_key());
    }

    fn is_held(&self, ticket: &Ticket) -> bool {
        self.held.contains(&ticket.owned_key())
    }

    /// A sweep started by [`Self::start_next`] ended.
    pub fn finished(&mut self, ticket: &Ticket) {
        let Some(index) = self.running.iter().position(|t| t == ticket) else {
            return;
        };
        self.running.swap_remove(index);
        if let Some(count) = self.running_per_namespace.get_mut(&ticket.namespace) {
            *count -= 1;
            if *count == 0 {
                self.running_per_namespace.remove(&ticket.namespace);
            }
        }
    }

    /// Whether [`Self::start_next`] would start `ticket` now (given what waits before it).
    pub fn can_start(&self, ticket: &Ticket) -> bool {
        let mut total = self.running.len();
        let mut per_namespace = self.running_per_namespace.clone();
        for waiting in &self.waiting {
            let in_namespace = per_namespace.entry(waiting.namespace.clone()).or_default();
            let startable = total < self.max_total
                && *in_namespace < self.max_per_namespace
                && !self.running.iter().any(|t| t.key() == waiting.key());
            if waiting == ticket {
                return startable;
            }
            if startable {
                total += 1;
                *in_namespace += 1;
            }
        }
        false
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(namespace: &str, name: &str) -> Ticket {
        Ticket {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("{namespace}/{name}-1"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_sweep_counts_its_wait_from_when_it_was_first_queued() {
        let mut queue = SweepQueue::new(1, 1);
        let (first, second) = (ticket("a", "r1"), ticket("b", "r2"));
        queue.enqueue(first.clone());
        queue.enqueue(second.clone());
        assert_eq!(queue.start_next(), Some(first.clone()));
        tokio::time::advance(Duration::from_secs(7)).await;
        queue.enqueue(second.clone()); // looked at again: still the same wait
        assert_eq!(queue.waited(&second), Duration::from_secs(7));
        assert_eq!(queue.waited(&first), Duration::ZERO, "running, not waiting");
        queue.withdraw("b", "r2");
        assert_eq!(queue.waited(&second), Duration::ZERO);
    }

    #[test]
    fn one_namespace_cannot_take_every_slot() {
        let mut queue = SweepQueue::new(4, 2);
        for name in ["a", "b", "c", "d", "e", "f"] {
            queue.enqueue(ticket("busy", name));
        }
        assert!(queue.can_start(&ticket("busy", "b")));
        assert!(
            !queue.can_start(&ticket("busy", "c")),
            "two of busy start first"
        );
        assert_eq!(queue.start_next(), Some(ticket("busy", "a")));
        assert_eq!(queue.start_next(), Some(ticket("busy", "b")));
        assert_eq!(queue.start_next(), None, "busy has its two");
        queue.enqueue(ticket("quiet", "x"));
        assert_eq!(
            queue.start_next(),
            Some(ticket("quiet", "x")),
            "waits behind nobody"
        );
        queue.finished(&ticket("busy", "a"));
        assert_eq!(queue.start_next(), Some(ticket("busy", "c")));
        assert_eq!((queue.running(), queue.waiting()), (3, 3));
    }

    #[test]
    fn a_held_ticket_starts_only_once_released_and_others_pass_it() {
        let mut queue = SweepQueue::new(4, 4);
        queue.enqueue(ticket("n", "held"));
        queue.hold(&ticket("n", "held"));
        queue.enqueue(ticket("n", "other"));
        assert_eq!(queue.start_next(), Some(ticket("n", "other")));
        assert_eq!(queue.start_next(), None);
        queue.release(&ticket("n", "held"));
        assert_eq!(queue.start_next(), Some(ticket("n", "held")));
    }

    #[test]
    fn the_total_caps_all_namespaces_together() {
        let mut queue = SweepQueue::new(2, 2);
        for namespace in ["n1", "n2", "n3"] {
            queue.enqueue(ticket(namespace, "r"));
        }
        assert!(queue.start_next().is_some());
        assert!(queue.start_next().is_some());
        assert_eq!(queue.start_next(), None);
    }

    #[test]
    fn tickets_are_queued_once_and_can_be_withdrawn() {
        let mut queue = SweepQueue::new(1, 1);
        queue.enqueue(ticket("n", "r"));
        queue.enqueue(ticket("n", "r"));
        assert_eq!(queue.waiting(), 1);
        assert_eq!(queue.activity(&ticket("n", "r")), Activity::Queued);
        queue.withdraw("n", "r");
        assert_eq!(queue.activity(&ticket("n", "r")), Activity::Idle);
        assert_eq!(queue.start_next(), None);
    }

    #[test]
    fn a_recreated_resource_waits_for_the_sweep_of_its_predecessor() {
        let mut queue = SweepQueue::new(4, 4);
        queue.enqueue(ticket("n", "r"));
        let old = queue.start_next().unwrap();
        let recreated = Ticket {
            uid: "n/r-2".into(),
            ..old.clone()
        };
        assert_eq!(queue.activity(&recreated), Activity::Running);
        queue.enqueue(recreated.clone());
        assert_eq!(queue.start_next(), None, "not while the old one runs");
        queue.finished(&old);
        queue.enqueue(recreated.clone());
        assert_eq!(queue.start_next(), Some(recreated));
    }
}
