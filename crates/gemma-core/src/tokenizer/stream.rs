//! Incremental detokenization for streaming generated text.

use super::Tokenizer;

/// Turns token ids, pushed one at a time, into text that never contains a broken character: bytes of a
/// character split across byte tokens (e.g. a 4-byte emoji as `<0xF0><0x9F><0xA4><0x96>`) are held
/// back until the character is complete. Concatenating every `push` and the final `finish` gives
/// exactly [`Tokenizer::decode`] of the same ids.
#[derive(Clone, Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    render_special: bool,
    /// Bytes not yet returned: at most an incomplete UTF-8 sequence after each `push`.
    pending: Vec<u8>,
    /// Whether the next token is the first one (the only one whose leading space may be stripped).
    at_start: bool,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder for generated text: control tokens render as nothing.
    pub fn new(tokenizer: &'t Tokenizer) -> StreamDecoder<'t> {
        StreamDecoder::with_special_rendering(tokenizer, false)
    }

    /// A decoder that, with `render_special`, also shows control tokens as their text.
    pub fn with_special_rendering(tokenizer: &'t Tokenizer, render_special: bool) -> StreamDecoder<'t> {
        StreamDecoder { tokenizer, render_special, pending: Vec::new(), at_start: true }
    }

    /// Adds one token and returns the text it completes (often empty while a character is pending).
    pub fn push(&mut self, id: u32) -> String {
        self.tokenizer.append_piece(id, self.render_special, self.at_start, &mut self.pending);
        self.at_start = false;
        self.take_complete()
    }

    /// Returns what is still held back, replacing a dangling partial character with U+FFFD, and resets
    /// the decoder for a new stream.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.at_start = true;
        rest
    }

    /// True when bytes of an unfinished character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Removes and returns the longest prefix of `pending` that can be decoded now. Invalid sequences
    /// become U+FFFD exactly as `String::from_utf8_lossy` would replace them; only an incomplete
    /// sequence at the very end stays pending.
    fn take_complete(&mut self) -> String {
        let mut text = String::new();
        let mut consumed = 0;
        while let Some(rest) = self.pending.get(consumed..) {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    consumed = self.pending.len();
                    break;
                }
                Err(error) => {
                    let valid_len = error.valid_up_to();
                    let valid = rest.get(..valid_len).unwrap_or_default();
                    text.push_str(&String::from_utf8_lossy(valid));
                    consumed += valid_len;
                    match error.error_len() {
                        Some(bad_len) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            consumed += bad_len;
                        }
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..consumed.min(self.pending.len()));
        text
    }
}
