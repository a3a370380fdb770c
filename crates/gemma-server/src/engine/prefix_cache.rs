//! The prefix cache: KV caches of finished sequences, kept with the token ids they hold, so that a new request
//! sharing a prefix with one of them (the next turn of a chat, the same system prompt) prefills only the rest.
//! Bounded by a token budget; the least recently used entries go first.

use gemma_core::KvCache;

/// What the prefix cache needs from a KV cache.
pub trait CachedKv: Sized {
    /// Positions held.
    fn positions(&self) -> usize;
    /// A copy of the first `len` positions; it may hold fewer (a ring layer may force 0).
    fn copy_prefix(&self, len: usize) -> Self;
}

impl CachedKv for KvCache {
    fn positions(&self) -> usize {
        self.len()
    }
    fn copy_prefix(&self, len: usize) -> Self {
        KvCache::copy_prefix(self, len)
    }
}

struct Entry<C> {
    tokens: Vec<u32>,
    cache: C,
    last_used: u64,
}

pub struct PrefixCache<C> {
    entries: Vec<Entry<C>>,
    budget_tokens: usize,
    clock: u64,
}

/// A copy of a cached prefix for a new sequence.
pub struct Reused<C> {
    pub cache: C,
    /// Leading prompt tokens already in `cache`.
    pub reused_tokens: usize,
}

impl<C: CachedKv> PrefixCache<C> {
    pub fn new(budget_tokens: usize) -> Self {
        PrefixCache { entries: Vec::new(), budget_tokens, clock: 0 }
    }

    /// The most tokens it keeps.
    pub fn budget(&self) -> usize {
        self.budget_tokens
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

    /// Copies the longest prefix `prompt` shares with an entry. At least the last prompt token is always left
    /// to prefill, because its logits are needed. The entry stays (and counts as used), so a short shared
    /// start (BOS, a turn marker) costs nothing to the cached conversation. `None` when nothing usable is
    /// shared.
    pub fn copy_longest_prefix(&mut self, prompt: &[u32]) -> Option<Reused<C>> {
        let limit = prompt.len().saturating_sub(1);
        let (best, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .filter(|&(_, shared)| shared > 0)
            .max_by_key(|&(i, shared)| (shared, self.entries[i].last_used))?;
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        let cache = entry.cache.copy_prefix(shared);
        let kept = cache.positions();
        (kept > 0).then_some(Reused { cache, reused_tokens: kept })
    }

    /// A copy of the cached KV of as much of `tokens` as an entry holds (all of it, unlike
    /// [`PrefixCache::copy_longest_prefix`]): the tokens it covers and the copy. For saving a slot.
    pub fn copy_of(&mut self, tokens: &[u32]) -> Option<(Vec<u32>, C)> {
        let (best, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, tokens)))
            .filter(|&(_, shared)| shared > 0)
            .max_by_key(|&(i, shared)| (shared, self.entries[i].last_used))?;
        let cache = self.entries[best].cache.copy_prefix(shared);
        let kept = cache.positions();
        (kept > 0).then(|| (tokens[..kept].to_vec(), cache))
    }

    /// Drops the entries that hold `tokens` or a part of them (an entry one of whose token lists starts with
    /// the other); returns the most positions one of them held. For erasing a slot.
    pub fn remove_covering(&mut self, tokens: &[u32]) -> usize {
        let mut removed = 0;
        self.entries.retain(|e| {
            let shared = common_prefix(&e.tokens, tokens);
            let covers = shared > 0 && shared == e.tokens.len().min(tokens.len());
            if covers {
                removed = removed.max(e.cache.positions());
            }
            !covers
        });
        removed
    }

    /// Keeps `cache`, which holds the KV of `tokens`, evicting the least recently used entries to stay within
    /// the budget. An entry that is a prefix of the new one is dropped: the new one serves it too.
    pub fn insert(&mut self, mut tokens: Vec<u32>, cache: C) {
        tokens.truncate(cache.positions());
        if tokens.is_empty() || tokens.len() > self.budget_tokens {
            return;
        }
        self.entries.retain(|e| !(e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens)));
        // The same tokens are already cached (a longer entry starts with them): nothing new to keep.
        if let Some(e) = self.entries.iter_mut().find(|e| e.tokens.starts_with(&tokens)) {
            self.clock += 1;
            e.last_used = self.clock;
            return;
        }
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

/// A cache that only counts positions, for the tests of the bookkeeping that never looks inside one.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Positions(pub usize);

#[cfg(test)]
impl CachedKv for Positions {
    fn positions(&self) -> usize {
        self.0
    }
    fn copy_prefix(&self, len: usize) -> Self {
        Positions(self.0.min(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_copy_and_remove_what_covers_their_tokens() {
        let mut pc = PrefixCache::new(100);
        pc.insert(vec![1, 2, 3, 4], Positions(4));
        pc.insert(vec![7, 8], Positions(2));
        // A slot whose last token never ran: the entry holds all but it.
        let (tokens, cache) = pc.copy_of(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!((tokens, cache.0), (vec![1, 2, 3, 4], 4));
        assert!(pc.copy_of(&[9]).is_none());
        assert_eq!(pc.remove_covering(&[1, 2, 3, 4, 5]), 4);
        assert_eq!(pc.remove_covering(&[1, 2, 3, 4, 5]), 0);
        assert_eq!(pc.len(), 1, "other entries stay");
    }

    #[test]
    fn copies_the_longest_shared_prefix_leaves_one_token_and_keeps_the_entry() {
        let mut pc = PrefixCache::new(100);
        pc.insert(vec![1, 2, 3, 4], Positions(4));
        pc.insert(vec![1, 2, 9, 9, 9], Positions(5));
        let r = pc.copy_longest_prefix(&[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!((r.reused_tokens, r.cache.0), (4, 4));
        assert_eq!(pc.len(), 2, "copying leaves the entry in place");
        // The same prompt again: all but the last token come from the cache.
        let r = pc.copy_longest_prefix(&[1, 2, 9, 9, 9]).unwrap();
        assert_eq!(r.reused_tokens, 4);
        assert_eq!(pc.copy_longest_prefix(&[1, 2, 9, 9, 9]).unwrap().reused_tokens, 4);
        assert_eq!(pc.copy_longest_prefix(&[1, 2]).unwrap().reused_tokens, 1);
        assert!(pc.copy_longest_prefix(&[7, 7]).is_none());
        assert!(pc.copy_longest_prefix(&[1]).is_none(), "the only token must be prefilled");
    }

    #[test]
    fn a_short_shared_start_reuses_it_without_consuming_a_long_entry() {
        let mut pc = PrefixCache::new(1000);
        pc.insert((0..20).collect(), Positions(20));
        assert_eq!(pc.copy_longest_prefix(&[0, 1, 2, 99]).unwrap().reused_tokens, 3);
        assert_eq!(pc.tokens(), 20, "the entry stays whole");
        assert_eq!(pc.copy_longest_prefix(&(0..12).chain([7]).collect::<Vec<_>>()).unwrap().reused_tokens, 12);
        // A prefix of an existing entry adds nothing.
        pc.insert((0..10).collect(), Positions(10));
        assert_eq!((pc.len(), pc.tokens()), (1, 20));
    }

    #[test]
    fn an_unusable_copy_is_no_reuse() {
        // A cache whose copies are empty (the ring lost the window) reports nothing reused.
        struct Lost(usize);
        impl CachedKv for Lost {
            fn positions(&self) -> usize {
                self.0
            }
            fn copy_prefix(&self, _: usize) -> Self {
                Lost(0)
            }
        }
        let mut pc = PrefixCache::new(100);
        pc.insert((0..50).collect(), Lost(50));
        assert!(pc.copy_longest_prefix(&(0..60).collect::<Vec<_>>()).is_none());
        assert_eq!(pc.len(), 1);
    }

    #[test]
    fn evicts_least_recently_used_within_the_budget() {
        let mut pc = PrefixCache::new(10);
        pc.insert(vec![1, 1, 1, 1], Positions(4));
        pc.insert(vec![2, 2, 2, 2], Positions(4));
        pc.insert(vec![3, 3, 3, 3], Positions(4));
        assert_eq!(pc.tokens(), 8);
        assert!(pc.copy_longest_prefix(&[1, 1, 1, 1, 1]).is_none(), "the oldest entry was evicted");
        // Using an entry makes it recent: the next eviction takes the other one.
        assert!(pc.copy_longest_prefix(&[2, 2, 7]).is_some());
        pc.insert(vec![4, 4, 4], Positions(3));
        assert!(pc.copy_longest_prefix(&[3, 3, 3, 7]).is_none(), "[3,3,3,3] was least recently used");
        assert!(pc.copy_longest_prefix(&[2, 2, 2, 7]).is_some());
        // Too big for the budget: not kept. A prefix of a new entry is replaced by it.
        pc.insert((0..11).collect(), Positions(11));
        assert_eq!(pc.tokens(), 7);
        pc.insert(vec![2, 2, 2, 2, 5], Positions(5));
        assert_eq!((pc.len(), pc.tokens()), (2, 8));
        // Only positions the cache really holds are recorded.
        pc.insert(vec![8, 8, 8], Positions(1));
        assert_eq!(pc.tokens(), 9);
    }
}
