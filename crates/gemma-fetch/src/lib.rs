//! gemma-fetch
