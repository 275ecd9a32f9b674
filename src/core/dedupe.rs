//! A bounded memory of `(from, message_id)` pairs already seen: the repeat
//! check of the adapter library and of the gateway's settled deliveries.
//!
//! Invariant: it holds at most `capacity` pairs and forgets the oldest first.

use std::collections::{HashSet, VecDeque};

/// Remembers the last `capacity` `(from, message_id)` pairs seen.
#[derive(Debug)]
pub struct Dedupe {
    seen: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
    capacity: usize,
}

impl Dedupe {
    /// Remembers up to `capacity` pairs.
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True when the pair is remembered (without remembering it).
    pub fn contains(&self, from: &str, message_id: &str) -> bool {
        self.seen
            .contains(&(from.to_owned(), message_id.to_owned()))
    }

    /// True when the pair was seen before; remembers it otherwise.
    pub fn seen(&mut self, from: &str, message_id: &str) -> bool {
        let k = (from.to_owned(), message_id.to_owned());
        if self.seen.contains(&k) {
            return true;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(k.clone());
        self.order.push_back(k);
        false
    }
}
