//! What llama-server calls slots: `parallel` places for a running sequence, each remembering its current (or
//! last) task. The engine has no fixed slots of its own, so each sequence takes the lowest free number when it
//! is admitted and gives it back when it ends; `GET /slots` reads a copy of this table.

use gemma_core::SamplingParams;

/// One slot: idle, running a sequence, or idle after one (its last task stays for inspection, as in
/// llama-server).
#[derive(Clone, Debug)]
pub struct SlotState {
    pub id: usize,
    pub processing: bool,
    pub task: Option<SlotTask>,
    /// The tokens of its last finished (or restored) sequence: what saving and erasing the slot act on.
    pub tokens: Vec<u32>,
}

/// The sequence a slot runs or ran.
#[derive(Clone, Debug)]
pub struct SlotTask {
    /// The request it belongs to (the choices of one request share it).
    pub id_task: u64,
    pub n_prompt_tokens: usize,
    /// Prompt tokens that came from the prefix cache or the session.
    pub n_prompt_tokens_cache: usize,
    /// Prompt tokens run through the model so far.
    pub n_prompt_tokens_processed: usize,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub n_probs: usize,
    pub n_decoded: usize,
    pub has_new_line: bool,
    pub has_next_token: bool,
}

impl SlotState {
    fn idle(id: usize) -> SlotState {
        SlotState { id, processing: false, task: None, tokens: Vec::new() }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SlotTable {
    slots: Vec<SlotState>,
}

impl SlotTable {
    pub fn new(parallel: usize) -> SlotTable {
        SlotTable { slots: (0..parallel).map(SlotState::idle).collect() }
    }

    /// Gives `task` the lowest idle slot. A request with more choices than `parallel` runs alone and may need
    /// more: the table grows.
    pub fn acquire(&mut self, task: SlotTask) -> usize {
        let id = self.slots.iter().position(|s| !s.processing).unwrap_or(self.slots.len());
        if id == self.slots.len() {
            self.slots.push(SlotState::idle(id));
        }
        self.slots[id].processing = true;
        self.slots[id].task = Some(task);
        id
    }

    /// Progress of slot `id`'s sequence: prompt tokens in its cache, tokens generated, and whether one of the
    /// new ones holds a line break.
    pub fn update(&mut self, id: usize, processed: usize, n_decoded: usize, new_line: bool) {
        if let Some(task) = self.slots.get_mut(id).and_then(|s| s.task.as_mut()) {
            task.n_prompt_tokens_processed = processed;
            task.n_decoded = n_decoded;
            task.has_new_line |= new_line;
        }
    }

    /// Slot `id`'s sequence ended; the slot keeps its last task.
    pub fn release(&mut self, id: usize) {
        if let Some(s) = self.slots.get_mut(id) {
            s.processing = false;
            if let Some(task) = s.task.as_mut() {
                task.has_next_token = false;
            }
        }
    }

    /// Slot `id` now stands for `tokens` (a sequence ended, or a saved cache was restored into it).
    pub fn set_tokens(&mut self, id: usize, tokens: Vec<u32>) {
        while self.slots.len() <= id {
            let next = self.slots.len();
            self.slots.push(SlotState::idle(next));
        }
        self.slots[id].tokens = tokens;
    }

    /// Every slot that is processing goes idle (the engine failed them all).
    pub fn release_all(&mut self) {
        for id in 0..self.slots.len() {
            self.release(id);
        }
    }

    pub fn slots(&self) -> &[SlotState] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id_task: u64) -> SlotTask {
        SlotTask {
            id_task,
            n_prompt_tokens: 3,
            n_prompt_tokens_cache: 1,
            n_prompt_tokens_processed: 0,
            sampling: SamplingParams::default(),
            max_tokens: 8,
            n_probs: 0,
            n_decoded: 0,
            has_new_line: false,
            has_next_token: true,
        }
    }

    #[test]
    fn sequences_take_the_lowest_free_slot_and_idle_slots_keep_their_last_task() {
        let mut t = SlotTable::new(2);
        assert_eq!((t.acquire(task(1)), t.acquire(task(2))), (0, 1));
        t.update(0, 2, 1, true);
        t.update(0, 2, 2, false);
        t.release(0);
        let s = &t.slots()[0];
        let last = s.task.as_ref().unwrap();
        assert!(!s.processing && !last.has_next_token && last.has_new_line, "{s:?}");
        assert_eq!((last.n_decoded, last.n_prompt_tokens_processed), (2, 2));
        assert_eq!(t.acquire(task(3)), 0, "the freed slot is reused");
        // Full: a request that runs alone with more choices than slots grows the table.
        assert_eq!(t.acquire(task(4)), 2);
        t.release_all();
        assert!(t.slots().iter().all(|s| !s.processing));
        // Updates of a slot that does not exist are ignored.
        t.update(99, 1, 1, true);
        t.release(99);
    }
}
