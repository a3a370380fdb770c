//! Stop strings: generation ends where one of them first appears in the generated text, and that
//! string is never shown. Text arrives in pieces (one per token) and a stop string may span pieces, so
//! [`StopMatcher`] releases a piece at once only when no stop string could start in it; text that might
//! be the beginning of one is held back until the next piece decides.

/// Finds the first occurrence of any stop string in a stream of text pieces.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// The longest stop string, in bytes: only this much minus one can ever be held back.
    longest: usize,
    /// Text received but not released: a possible beginning of a stop string.
    pending: String,
    /// What the last `push` or `finish` released (kept to reuse its allocation).
    released: String,
    matched: Option<usize>,
}

/// The outcome of one [`StopMatcher::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopStep<'a> {
    /// Text that can be shown now.
    pub text: &'a str,
    /// A stop string has been found (in this piece or before): nothing more will be released.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored (they would match before any text).
    pub fn new<S: Into<String>>(stops: impl IntoIterator<Item = S>) -> StopMatcher {
        let stops: Vec<String> = stops.into_iter().map(Into::into).filter(|s| !s.is_empty()).collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        StopMatcher { stops, longest, ..Default::default() }
    }

    pub fn stops(&self) -> &[String] {
        &self.stops
    }

    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that ended the text, once one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched.and_then(|i| self.stops.get(i)).map(String::as_str)
    }

    /// Adds the next piece of text and returns what can be shown now. When a stop string appears, the
    /// text before it is released and everything from it on is dropped; the earliest occurrence wins,
    /// and among stop strings starting at the same place the first listed.
    pub fn push(&mut self, piece: &str) -> StopStep<'_> {
        self.released.clear();
        if self.matched.is_some() {
            return StopStep { text: &self.released, stopped: true };
        }
        self.pending.push_str(piece);
        // A match can only start inside `pending`: earlier text was released because no stop string
        // could start there.
        let mut first: Option<(usize, usize)> = None;
        for (i, stop) in self.stops.iter().enumerate() {
            if let Some(at) = self.pending.find(stop.as_str()) {
                if first.is_none_or(|(best, _)| at < best) {
                    first = Some((at, i));
                }
            }
        }
        if let Some((at, i)) = first {
            self.released.push_str(&self.pending[..at]);
            self.pending.clear();
            self.matched = Some(i);
            return StopStep { text: &self.released, stopped: true };
        }
        let hold_from = self.hold_start();
        self.released.push_str(&self.pending[..hold_from]);
        self.pending.drain(..hold_from);
        StopStep { text: &self.released, stopped: false }
    }

    /// Ends the stream: returns the text still held back (nothing if a stop string was found) and
    /// makes the matcher ready for a new stream.
    pub fn finish(&mut self) -> &str {
        self.released.clear();
        if self.matched.is_none() {
            std::mem::swap(&mut self.released, &mut self.pending);
        }
        self.pending.clear();
        self.matched = None;
        &self.released
    }

    /// Where the longest suffix of `pending` that begins some stop string starts (`pending.len()` if
    /// none). A stop string begins with a whole character, so that suffix starts on a char boundary.
    fn hold_start(&self) -> usize {
        let len = self.pending.len();
        let earliest = len.saturating_sub(self.longest.saturating_sub(1));
        self.pending
            .char_indices()
            .map(|(i, _)| i)
            .skip_while(|&i| i < earliest)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.pending[i..])))
            .unwrap_or(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and returns (all released text, whether it stopped, which stop string).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, Option<String>) {
        let mut m = StopMatcher::new(stops.iter().copied());
        let mut out = String::new();
        let mut stopped = false;
        for p in pieces {
            let step = m.push(p);
            out.push_str(step.text);
            stopped = step.stopped;
        }
        let matched = m.matched().map(str::to_string);
        out.push_str(m.finish());
        (out, stopped, matched)
    }

    #[test]
    fn a_stop_string_split_across_pieces_is_cut_and_never_shown() {
        assert_eq!(run(&["\nUser:"], &["Hel", "lo\nUser:"]), ("Hello".into(), true, Some("\nUser:".into())));
        assert_eq!(run(&["\nUser:"], &["Hello\nUs", "er: more"]).0, "Hello");
        assert_eq!(run(&["\nUser:"], &["Hello", "\n", "U", "s", "e", "r", ":", " x"]).0, "Hello");
        // A near miss releases the held text once it cannot be a stop string any more.
        assert_eq!(run(&["\nUser:"], &["Hello\nUs", "ual"]), ("Hello\nUsual".into(), false, None));
    }

    #[test]
    fn text_is_held_back_only_while_it_could_start_a_stop_string() {
        let mut m = StopMatcher::new(["\nUser:"]);
        assert_eq!(m.push("Hel").text, "Hel");
        assert_eq!(m.push("lo\nUs").text, "lo");
        assert_eq!(m.push("e").text, "");
        assert_eq!(m.push("d it").text, "\nUsed it");
        assert_eq!(m.finish(), "");
        // Without stop strings everything passes straight through.
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(m.push("a\nUser:").text, "a\nUser:");
    }

    #[test]
    fn a_stop_string_at_the_very_start() {
        assert_eq!(run(&["User:"], &["User: hi"]), (String::new(), true, Some("User:".into())));
        assert_eq!(run(&["User:"], &["Us", "er:", " hi"]), (String::new(), true, Some("User:".into())));
        // Nothing is released after the stop.
        let mut m = StopMatcher::new(["x"]);
        assert_eq!(m.push("x"), StopStep { text: "", stopped: true });
        assert_eq!(m.push("more"), StopStep { text: "", stopped: true });
    }

    #[test]
    fn overlapping_stop_strings_stop_at_the_earliest_occurrence() {
        // "abcd" fails at 'e', but "bc" inside it is a match.
        assert_eq!(run(&["abcd", "bc"], &["xab", "ce"]), ("xa".into(), true, Some("bc".into())));
        // "lo w" starts before "world".
        assert_eq!(run(&["world", "lo w"], &["hello", " world"]).0, "hel");
        // Same start: the text is the same whichever is reported; the first listed is.
        assert_eq!(run(&["ab", "abc"], &["zabc"]), ("z".into(), true, Some("ab".into())));
        // A stop string that is its own prefix-overlap ("aab" in "aaab").
        assert_eq!(run(&["aab"], &["a", "a", "a", "b"]).0, "a");
    }

    #[test]
    fn every_split_of_the_text_gives_the_same_result() {
        let text = "One\nUser: two\nAssistant: three";
        let stops = ["\nAssistant:", "\nUser:"];
        let expected = &text[..text.find("\nUser:").unwrap()];
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        for &a in &bounds {
            for &b in bounds.iter().filter(|&&b| b >= a) {
                let pieces = [&text[..a], &text[a..b], &text[b..]];
                assert_eq!(run(&stops, &pieces).0, expected, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn multi_byte_characters_are_never_split() {
        // The stop string starts with 'é' (C3 A9); 'ã' (C3 A3) shares its first byte.
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true, Some("é!".into())));
        assert_eq!(run(&["é!"], &["ã", "é", "x"]), ("ãéx".into(), false, None));
        assert_eq!(run(&["🙂x"], &["a🙂", "y"]).0, "a🙂y");
        let mut m = StopMatcher::new(["🙂x"]);
        assert_eq!(m.push("a🙂").text, "a");
        assert_eq!(m.push("🙂").text, "🙂");
        assert_eq!(m.push("x").text, "");
        assert_eq!(m.matched(), Some("🙂x"));
        // Stop strings longer than the held text, with multi-byte pieces: hold-back starts on a char.
        assert_eq!(run(&["日本語です"], &["これは日本", "語でした"]).0, "これは日本語でした");
        assert_eq!(run(&["日本語です"], &["これは日本", "語です。"]).0, "これは");
    }

    #[test]
    fn empty_stop_strings_are_ignored_and_finish_resets() {
        let mut m = StopMatcher::new(["", "end"]);
        assert_eq!(m.stops(), ["end"]);
        assert_eq!(m.push("the en").text, "the ");
        assert_eq!(m.finish(), "en");
        assert_eq!(m.push("the end").text, "the ");
        assert!(m.is_stopped());
        assert_eq!(m.finish(), "");
        assert!(!m.is_stopped());
        assert_eq!(m.push("again").text, "again");
    }
}
