//! The prefix cache: KV caches of finished sequences, kept with the token ids they hold, so that a new request
//! sharing a prefix with one of them (the next turn of a chat, the same system prompt) prefills only the rest.
//! Bounded by a token budget; the least recently used entries go first.

use gemma_core::KvCache;

/// What the prefix cache needs from a KV cache.
pub trait CachedKv {
    /// Positions held.
    fn positions(&self) -> usize;
    /// Keeps the first `len` positions and returns how many it could keep (a ring layer may force 0).
    fn keep_prefix(&mut self, len: usize) -> usize;
}

impl CachedKv for KvCache {
    fn positions(&self) -> usize {
        self.len()
    }
    fn keep_prefix(&mut self, len: usize) -> usize {
        self.truncate(len)
    }
}

struct Entry<C> {
    tokens: Vec<u32>,
    cache: C,
    last_used: u64,
}

/// A shared prefix this long is worth taking a cache entry for, however long the entry.
pub const WORTHWHILE_TOKENS: usize = 256;

pub struct PrefixCache<C> {
    entries: Vec<Entry<C>>,
    budget_tokens: usize,
    clock: u64,
}

/// A cache taken out of the prefix cache for a new sequence.
pub struct Reused<C> {
    pub cache: C,
    /// Leading prompt tokens already in `cache`.
    pub reused_tokens: usize,
}

impl<C: CachedKv> PrefixCache<C> {
    pub fn new(budget_tokens: usize) -> Self {
        PrefixCache { entries: Vec::new(), budget_tokens, clock: 0 }
    }

    /// Tokens held by all entries.
    pub fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the entry sharing the longest prefix with `prompt`, cut to that prefix. At least the last prompt
    /// token is always left to prefill, because its logits are needed. `None` when nothing worth reusing is
    /// shared.
    ///
    /// Reuse moves the cache out (a KV cache cannot be copied), so an entry is only taken when the request
    /// keeps at least half of it or saves [`WORTHWHILE_TOKENS`]: every prompt starts with the same few
    /// tokens (BOS, a turn marker), and those alone must not destroy a long cached conversation.
    pub fn take_longest_prefix(&mut self, prompt: &[u32]) -> Option<Reused<C>> {
        let limit = prompt.len().saturating_sub(1);
        let (best, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .filter(|&(i, shared)| {
                shared > 0 && (2 * shared >= self.entries[i].tokens.len() || shared >= WORTHWHILE_TOKENS)
            })
            .max_by_key(|&(i, shared)| (shared, self.entries[i].last_used))?;
        let mut entry = self.entries.swap_remove(best);
        let kept = entry.cache.keep_prefix(shared);
        if kept == 0 {
            return None;
        }
        Some(Reused { cache: entry.cache, reused_tokens: kept })
    }

    /// Keeps `cache`, which holds the KV of `tokens`, evicting the least recently used entries to stay within
    /// the budget. An entry that is a prefix of the new one is dropped: the new one serves it too.
    pub fn insert(&mut self, mut tokens: Vec<u32>, cache: C) {
        tokens.truncate(cache.positions());
        if tokens.is_empty() || tokens.len() > self.budget_tokens {
            return;
        }
        self.entries.retain(|e| !(e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens)));
        while self.tokens() + tokens.len() > self.budget_tokens {
            let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
        self.clock += 1;
        self.entries.push(Entry { tokens, cache, last_used: self.clock });
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache that only counts positions: the prefix cache's bookkeeping does not look inside.
    struct Positions(usize);
    impl CachedKv for Positions {
        fn positions(&self) -> usize {
            self.0
        }
        fn keep_prefix(&mut self, len: usize) -> usize {
            self.0 = self.0.min(len);
            self.0
        }
    }

    #[test]
    fn takes_the_longest_shared_prefix_and_leaves_one_token() {
        let mut pc = PrefixCache::new(100);
        pc.insert(vec![1, 2, 3, 4], Positions(4));
        pc.insert(vec![1, 2, 9, 9, 9], Positions(5));
        let r = pc.take_longest_prefix(&[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!((r.reused_tokens, r.cache.0), (4, 4));
        assert_eq!(pc.len(), 1);
        // The same prompt again: all but the last token come from the cache.
        let r = pc.take_longest_prefix(&[1, 2, 9, 9, 9]).unwrap();
        assert_eq!(r.reused_tokens, 4);
        assert!(pc.is_empty());
        assert!(pc.take_longest_prefix(&[1, 2]).is_none());
    }

    #[test]
    fn a_short_shared_start_does_not_consume_a_long_entry() {
        let mut pc = PrefixCache::new(1000);
        pc.insert((0..20).collect(), Positions(20));
        assert!(pc.take_longest_prefix(&[0, 1, 2, 99]).is_none());
        assert_eq!(pc.len(), 1, "the entry stays");
        assert_eq!(pc.take_longest_prefix(&(0..12).chain([7]).collect::<Vec<_>>()).unwrap().reused_tokens, 12);
    }

    #[test]
    fn evicts_least_recently_used_within_the_budget() {
        let mut pc = PrefixCache::new(10);
        pc.insert(vec![1, 1, 1, 1], Positions(4));
        pc.insert(vec![2, 2, 2, 2], Positions(4));
        pc.insert(vec![3, 3, 3, 3], Positions(4));
        assert_eq!(pc.tokens(), 8);
        assert!(pc.take_longest_prefix(&[1, 1, 1, 1, 1]).is_none(), "the oldest entry was evicted");
        assert!(pc.take_longest_prefix(&[3, 3, 7]).is_some());
        // Too big for the budget: not kept. A prefix of a new entry is replaced by it.
        pc.insert((0..11).collect(), Positions(11));
        assert_eq!(pc.tokens(), 4);
        pc.insert(vec![2, 2, 2, 2, 5], Positions(5));
        assert_eq!((pc.len(), pc.tokens()), (1, 5));
        // Only positions the cache really holds are recorded.
        pc.insert(vec![8, 8, 8], Positions(1));
        assert_eq!(pc.tokens(), 6);
    }
}
