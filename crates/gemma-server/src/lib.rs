//! OpenAI- and Gemini-compatible HTTP server (work in progress).
