//! True-ups held until the host lets tollgate call out.
//!
//! On Kong, ngx_wasm_module refuses `dispatch_http_call` in response phases, which is
//! when a true-up (the overrun of a request on a shared limit) becomes known. It does
//! accept the call in the root context's `on_tick`, so the adapter queues the true-up
//! here, per VM (one per nginx worker), and the tick sends what is queued. This is the
//! queue: bounded, oldest dropped first, and merging true-ups for the same counter
//! into one call. Generic over the target (the route's settings in the adapter) so it
//! is tested natively.

use std::collections::VecDeque;
use std::rc::Rc;

/// Most true-ups held per VM. With one tick a second this is the backlog a worker
/// may build between two ticks before the oldest are dropped.
pub const MAX_QUEUED: usize = 1024;

/// Most calls one tick sends; more distinct counters wait for the next tick, so a
/// burst does not open a thousand connections at once.
pub const MAX_CALLS_PER_TICK: usize = 256;

/// One true-up to send: where (`target`, the settings the call is built from), for
/// which descriptor and how many tokens.
#[derive(Debug)]
pub struct PendingTrueUp<T> {
    /// The settings the call goes out with (cluster, path, namespace, timeout).
    pub target: Rc<T>,
    /// Descriptor entries, as the admission call sent them.
    pub entries: Vec<(String, String)>,
    /// Tokens to charge.
    pub hits: u64,
}

impl<T> PendingTrueUp<T> {
    /// The descriptor entries in the shape the request builders take.
    pub fn entry_refs(&self) -> Vec<(&str, &str)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Both charge the same counter: one call with the sum does the same.
    fn same_counter(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.target, &other.target) && self.entries == other.entries
    }
}

/// What [`TrueUpQueue::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the next tick.
    Queued,
    /// Queued; the queue was full, so the oldest true-up (`hits` tokens) was dropped
    /// and will never be charged.
    DroppedOldest {
        /// Tokens the dropped true-up would have charged.
        hits: u64,
        /// The first drop since the last [`TrueUpQueue::take_dropped`]: log this one,
        /// the rest go into the next summary.
        first: bool,
    },
    /// Not queued: 0 tokens, nothing to send.
    Nothing,
    /// Not queued: no timer drains this queue (the host gave no tick period).
    Disabled,
}

/// The per-VM queue of true-ups waiting for the tick.
#[derive(Debug)]
pub struct TrueUpQueue<T> {
    items: VecDeque<PendingTrueUp<T>>,
    cap: usize,
    enabled: bool,
    /// Drops since the last [`TrueUpQueue::take_dropped`]: (true-ups, tokens).
    dropped: (u64, u64),
}

impl<T> Default for TrueUpQueue<T> {
    fn default() -> Self {
        TrueUpQueue::new(MAX_QUEUED)
    }
}

impl<T> TrueUpQueue<T> {
    /// An empty, disabled queue holding at most `cap` true-ups (at least 1).
    pub fn new(cap: usize) -> Self {
        TrueUpQueue {
            items: VecDeque::new(),
            cap: cap.max(1),
            enabled: false,
            dropped: (0, 0),
        }
    }

    /// Accept true-ups (a timer drains the queue) or not. Disabling keeps what is
    /// queued: it is sent if ticks still come.
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
    }

    /// True when true-ups are accepted.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True-ups waiting (before merging).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Nothing waits: the tick has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queue a true-up; when full, the oldest is dropped to make room (the newest
    /// counts are the ones a client is still being limited on).
    pub fn push(&mut self, p: PendingTrueUp<T>) -> Pushed {
        if !self.enabled {
            return Pushed::Disabled;
        }
        if p.hits == 0 {
            return Pushed::Nothing;
        }
        let mut out = Pushed::Queued;
        if self.items.len() >= self.cap {
            if let Some(old) = self.items.pop_front() {
                let first = self.dropped.0 == 0;
                self.dropped.0 += 1;
                self.dropped.1 = self.dropped.1.saturating_add(old.hits);
                out = Pushed::DroppedOldest {
                    hits: old.hits,
                    first,
                };
            }
        }
        self.items.push_back(p);
        out
    }

    /// The calls to send now: every queued true-up, those for the same counter merged
    /// into one (tokens summed), at most `max_calls` of them in queue order. True-ups
    /// for further counters stay queued for the next tick.
    pub fn take_batch(&mut self, max_calls: usize) -> Vec<PendingTrueUp<T>> {
        let mut out: Vec<PendingTrueUp<T>> = Vec::new();
        let mut rest = VecDeque::new();
        while let Some(p) = self.items.pop_front() {
            if let Some(o) = out.iter_mut().find(|o| o.same_counter(&p)) {
                o.hits = o.hits.saturating_add(p.hits);
            } else if out.len() < max_calls {
                out.push(p);
            } else {
                rest.push_back(p);
            }
        }
        self.items = rest;
        out
    }

    /// True-ups dropped (and their tokens) since the last call, for one log line
    /// per tick instead of one per drop.
    pub fn take_dropped(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands for a route's settings.
    #[derive(Debug)]
    struct Route(&'static str);

    fn up(target: &Rc<Route>, consumer: &str, hits: u64) -> PendingTrueUp<Route> {
        PendingTrueUp {
            target: target.clone(),
            entries: vec![("consumer".to_string(), consumer.to_string())],
            hits,
        }
    }

    fn sent(batch: &[PendingTrueUp<Route>]) -> Vec<(&'static str, String, u64)> {
        batch
            .iter()
            .map(|p| (p.target.0, p.entries[0].1.clone(), p.hits))
            .collect()
    }

    #[test]
    fn disabled_or_empty_true_ups_are_not_queued() {
        let route = Rc::new(Route("a"));
        let mut q = TrueUpQueue::default();
        assert_eq!(
            q.push(up(&route, "c1", 5)),
            Pushed::Disabled,
            "no timer yet"
        );
        assert!(q.is_empty());
        q.set_enabled(true);
        assert!(q.enabled());
        assert_eq!(q.push(up(&route, "c1", 0)), Pushed::Nothing);
        assert_eq!(q.push(up(&route, "c1", 5)), Pushed::Queued);
        assert_eq!(q.len(), 1);
        // Disabling keeps what is queued.
        q.set_enabled(false);
        assert_eq!(sent(&q.take_batch(10)), vec![("a", "c1".to_string(), 5)]);
        assert!(q.take_batch(10).is_empty(), "sent once");
    }

    #[test]
    fn same_counter_is_one_call_with_the_sum_in_queue_order() {
        let (a, b) = (Rc::new(Route("a")), Rc::new(Route("b")));
        let mut q = TrueUpQueue::default();
        q.set_enabled(true);
        for p in [
            up(&a, "c1", 5),
            up(&a, "c2", 7),
            up(&a, "c1", 10),
            // Same descriptor, other route settings: another counter (maybe another
            // service or namespace), never merged.
            up(&b, "c1", 1),
            up(&a, "c2", u64::MAX),
        ] {
            q.push(p);
        }
        assert_eq!(
            sent(&q.take_batch(MAX_CALLS_PER_TICK)),
            vec![
                ("a", "c1".to_string(), 15),
                ("a", "c2".to_string(), u64::MAX),
                ("b", "c1".to_string(), 1)
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_tick_sends_at_most_max_calls_and_keeps_the_rest() {
        let a = Rc::new(Route("a"));
        let mut q = TrueUpQueue::default();
        q.set_enabled(true);
        for c in ["c1", "c2", "c3", "c1", "c3", "c4"] {
            q.push(up(&a, c, 1));
        }
        // Two calls: c1 (merged, 2) and c2; c3 and c4 wait, c1's second true-up
        // joins the call already going out.
        assert_eq!(
            sent(&q.take_batch(2)),
            vec![("a", "c1".to_string(), 2), ("a", "c2".to_string(), 1)]
        );
        assert_eq!(q.len(), 3);
        assert_eq!(
            sent(&q.take_batch(2)),
            vec![("a", "c3".to_string(), 2), ("a", "c4".to_string(), 1)]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let a = Rc::new(Route("a"));
        let mut q = TrueUpQueue::new(3);
        q.set_enabled(true);
        for (c, hits) in [("c1", 10), ("c2", 20), ("c3", 30)] {
            assert_eq!(q.push(up(&a, c, hits)), Pushed::Queued);
        }
        assert_eq!(q.take_dropped(), (0, 0));
        assert_eq!(
            q.push(up(&a, "c4", 40)),
            Pushed::DroppedOldest {
                hits: 10,
                first: true
            }
        );
        assert_eq!(
            q.push(up(&a, "c5", 50)),
            Pushed::DroppedOldest {
                hits: 20,
                first: false
            }
        );
        assert_eq!(q.len(), 3, "bounded");
        assert_eq!(q.take_dropped(), (2, 30));
        assert_eq!(q.take_dropped(), (0, 0), "reported once");
        assert!(
            matches!(
                q.push(up(&a, "c6", 1)),
                Pushed::DroppedOldest { first: true, .. }
            ),
            "first again after a report"
        );
        assert_eq!(q.take_dropped(), (1, 30));
        assert_eq!(
            sent(&q.take_batch(10)),
            vec![
                ("a", "c4".to_string(), 40),
                ("a", "c5".to_string(), 50),
                ("a", "c6".to_string(), 1)
            ]
        );
        // The default bound.
        let mut q = TrueUpQueue::default();
        q.set_enabled(true);
        for k in 0..MAX_QUEUED + 5 {
            q.push(up(&a, &k.to_string(), 1));
        }
        assert_eq!(q.len(), MAX_QUEUED);
        assert_eq!(q.take_dropped(), (5, 5));
        // A zero cap still holds one.
        let mut q = TrueUpQueue::new(0);
        q.set_enabled(true);
        q.push(up(&a, "x", 1));
        assert_eq!(
            q.push(up(&a, "y", 2)),
            Pushed::DroppedOldest {
                hits: 1,
                first: true
            }
        );
    }
}
