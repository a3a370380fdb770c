//! gemma-ops
