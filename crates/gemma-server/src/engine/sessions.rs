//! Sessions of `POST /generate`: a KV cache and the tokens it holds, kept under a client-chosen id between
//! calls so that the next call prefills only its new tokens. Bounded in number; the least recently used
//! session is evicted first. While a request runs on a session, its cache is out of the store and the id is
//! marked busy (a second request on it at the same time is refused).

use std::collections::{HashMap, HashSet};

use super::prefix_cache::CachedKv;

/// A stored session.
pub struct Session<C> {
    /// Everything said so far (prompts and answers); the cache holds a prefix of it.
    pub tokens: Vec<u32>,
    pub cache: C,
    /// The LoRA scales the cache was computed with (the last request's).
    pub lora: Vec<f32>,
    last_used: u64,
}

/// A request on a session that is already running one.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionBusy;

pub struct Sessions<C = gemma_core::KvCache> {
    stored: HashMap<String, Session<C>>,
    busy: HashSet<String>,
    limit: usize,
    clock: u64,
}

impl<C: CachedKv> Sessions<C> {
    pub fn new(limit: usize) -> Self {
        Sessions { stored: HashMap::new(), busy: HashSet::new(), limit, clock: 0 }
    }

    /// Sessions stored (not counting those running now).
    pub fn len(&self) -> usize {
        self.stored.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stored.is_empty()
    }

    /// Tokens held by the stored caches.
    pub fn tokens(&self) -> usize {
        self.stored.values().map(|s| s.cache.positions()).sum()
    }

    /// Takes session `id` out of the store for a request; `Ok(None)` when there is no such session yet.
    pub fn take(&mut self, id: &str) -> Result<Option<Session<C>>, SessionBusy> {
        if self.busy.contains(id) {
            return Err(SessionBusy);
        }
        Ok(self.stored.remove(id))
    }

    /// A request now runs on `id`.
    pub fn mark_busy(&mut self, id: &str) {
        self.busy.insert(id.to_string());
    }

    /// The request on `id` ended without a cache to store (it failed): the session is gone.
    pub fn release(&mut self, id: &str) {
        self.busy.remove(id);
    }

    /// Stores the session after a request (its cache computed at LoRA scales `lora`), evicting the least
    /// recently used ones beyond the limit.
    pub fn put(&mut self, id: String, tokens: Vec<u32>, cache: C, lora: Vec<f32>) {
        self.busy.remove(&id);
        if self.limit == 0 {
            return;
        }
        while self.stored.len() >= self.limit {
            let Some(oldest) = self.stored.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone()) else {
                break;
            };
            self.stored.remove(&oldest);
        }
        self.clock += 1;
        self.stored.insert(id, Session { tokens, cache, lora, last_used: self.clock });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::prefix_cache::Positions;

    #[test]
    fn a_session_comes_back_with_its_tokens_and_is_exclusive_while_running() {
        let mut s = Sessions::new(4);
        assert!(s.take("a").unwrap().is_none());
        s.mark_busy("a");
        assert_eq!(s.take("a").err(), Some(SessionBusy));
        s.put("a".into(), vec![1, 2, 3], Positions(2), vec![]);
        assert_eq!((s.len(), s.tokens()), (1, 2));
        let back = s.take("a").unwrap().unwrap();
        assert_eq!((back.tokens, back.cache.0), (vec![1, 2, 3], 2));
        assert!(s.is_empty());
        // A failed request frees the id; the session starts over.
        s.mark_busy("a");
        s.release("a");
        assert!(s.take("a").unwrap().is_none());
    }

    #[test]
    fn the_least_recently_used_session_is_evicted_at_the_limit() {
        let mut s = Sessions::new(2);
        s.put("a".into(), vec![1], Positions(1), vec![]);
        s.put("b".into(), vec![2], Positions(1), vec![]);
        // Using "a" makes it the most recent.
        let a = s.take("a").unwrap().unwrap();
        s.put("a".into(), a.tokens, a.cache, vec![]);
        s.put("c".into(), vec![3], Positions(1), vec![]);
        assert_eq!(s.len(), 2);
        assert!(s.take("b").unwrap().is_none(), "b was least recently used");
        assert!(s.take("a").unwrap().is_some());
        assert!(s.take("c").unwrap().is_some());
        let mut none = Sessions::new(0);
        none.put("x".into(), vec![1], Positions(1), vec![]);
        assert!(none.is_empty(), "a limit of 0 keeps no sessions");
    }
}
