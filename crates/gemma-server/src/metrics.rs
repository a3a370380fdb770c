//! Prometheus metrics, rendered in the text exposition format by hand (a few counters, gauges and two
//! histograms do not need a metrics crate).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Seconds from a request's arrival to its first generated token.
const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Seconds between consecutive tokens of one sequence.
const ITL_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        for (c, b) in self.counts.iter_mut().zip(self.bounds) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

pub struct Metrics {
    /// (route pattern, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_reused_tokens: AtomicU64,
    pub queue_depth: AtomicU64,
    pub running_sequences: AtomicU64,
    pub kv_tokens_in_use: AtomicU64,
    pub prefix_cache_tokens: AtomicU64,
    pub engine_steps: AtomicU64,
    pub engine_step_tokens: AtomicU64,
    /// Most sequences one forward pass has served (batching at work).
    pub engine_step_sequences_max: AtomicU64,
    ttft: Mutex<Histogram>,
    inter_token: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            prefix_cache_reused_tokens: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            running_sequences: AtomicU64::new(0),
            kv_tokens_in_use: AtomicU64::new(0),
            prefix_cache_tokens: AtomicU64::new(0),
            engine_steps: AtomicU64::new(0),
            engine_step_tokens: AtomicU64::new(0),
            engine_step_sequences_max: AtomicU64::new(0),
            ttft: Mutex::new(Histogram::new(TTFT_BUCKETS)),
            inter_token: Mutex::new(Histogram::new(ITL_BUCKETS)),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    pub fn observe_ttft(&self, secs: f64) {
        self.ttft.lock().unwrap_or_else(|e| e.into_inner()).observe(secs);
    }

    pub fn observe_inter_token(&self, secs: f64) {
        self.inter_token.lock().unwrap_or_else(|e| e.into_inner()).observe(secs);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP gemma_requests_total HTTP requests by route pattern and status.\n");
        out.push_str("# TYPE gemma_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "gemma_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Ordering::Relaxed));
        };
        scalar(&mut out, "gemma_prompt_tokens_total", "counter", "Prompt tokens received.", &self.prompt_tokens);
        scalar(&mut out, "gemma_generated_tokens_total", "counter", "Tokens generated.", &self.generated_tokens);
        scalar(
            &mut out,
            "gemma_prefix_cache_hits_total",
            "counter",
            "Sequences that reused a cached prompt prefix.",
            &self.prefix_cache_hits,
        );
        scalar(
            &mut out,
            "gemma_prefix_cache_reused_tokens_total",
            "counter",
            "Prompt tokens taken from the prefix cache instead of being prefilled.",
            &self.prefix_cache_reused_tokens,
        );
        scalar(&mut out, "gemma_queue_depth", "gauge", "Requests waiting for a sequence slot.", &self.queue_depth);
        scalar(&mut out, "gemma_running_sequences", "gauge", "Sequences being generated.", &self.running_sequences);
        scalar(
            &mut out,
            "gemma_kv_tokens_in_use",
            "gauge",
            "Positions held in KV caches (running sequences and prefix cache).",
            &self.kv_tokens_in_use,
        );
        scalar(
            &mut out,
            "gemma_prefix_cache_tokens",
            "gauge",
            "Positions held by the prefix cache.",
            &self.prefix_cache_tokens,
        );
        scalar(&mut out, "gemma_engine_steps_total", "counter", "Batched forward passes.", &self.engine_steps);
        scalar(
            &mut out,
            "gemma_engine_step_tokens_total",
            "counter",
            "Tokens run by the forward passes (decode and prefill).",
            &self.engine_step_tokens,
        );
        scalar(
            &mut out,
            "gemma_engine_step_sequences_max",
            "gauge",
            "Most sequences served by one forward pass.",
            &self.engine_step_sequences_max,
        );
        self.ttft.lock().unwrap_or_else(|e| e.into_inner()).render(
            "gemma_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
            &mut out,
        );
        self.inter_token.lock().unwrap_or_else(|e| e.into_inner()).render(
            "gemma_inter_token_seconds",
            "Time between consecutive generated tokens of a sequence.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let m = Metrics::default();
        m.count_request("/v1/completions", 200);
        m.count_request("/v1/completions", 200);
        m.count_request("/health", 503);
        m.observe_ttft(0.03);
        m.observe_ttft(7.0);
        m.prompt_tokens.fetch_add(12, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("gemma_requests_total{route=\"/v1/completions\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("gemma_requests_total{route=\"/health\",status=\"503\"} 1\n"));
        assert!(text.contains("gemma_prompt_tokens_total 12\n"));
        assert!(text.contains("gemma_time_to_first_token_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("gemma_time_to_first_token_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("gemma_time_to_first_token_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("gemma_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("gemma_time_to_first_token_seconds_count 2\n"));
    }
}
