//! gemma-core
