//! `gemma sysinfo`: what this machine and this build can do, and which models are cached.

use std::io::Write;

use anyhow::Result;
use gemma_compression::{cpu_has_avx512_vnni, has_avx512_vnni, quant_format, simd_level, GgmlType};
use serde_json::json;

use crate::args::SysinfoArgs;

/// The CPU features the kernels look at, in the order they are reported.
const X86_FEATURES: [&str; 8] = ["sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni"];

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| matches!(k.trim(), "model name" | "Model" | "Hardware" | "cpu model"))
        .map(|(_, v)| v.trim().to_owned())
}

fn detected_features() -> Vec<(&'static str, bool)> {
    X86_FEATURES.iter().map(|&f| (f, x86_feature(f))).collect()
}

#[cfg(target_arch = "x86_64")]
fn x86_feature(name: &str) -> bool {
    match name {
        "sse4.2" => is_x86_feature_detected!("sse4.2"),
        "avx" => is_x86_feature_detected!("avx"),
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "f16c" => is_x86_feature_detected!("f16c"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn x86_feature(_name: &str) -> bool {
    false
}

/// The kernel path the dot products take: the SIMD level, plus VNNI for the integer dots when used.
fn kernel_path() -> String {
    let level = simd_level().to_string();
    if has_avx512_vnni() {
        format!("{level}+vnni")
    } else {
        level
    }
}

fn supported_quant_types() -> Vec<&'static str> {
    GgmlType::ALL.iter().filter(|t| quant_format(**t).is_ok()).map(|t| t.name()).collect()
}

/// Models in the cache with their sizes, by name: model files, and model folders (sentence-transformers) with
/// the size of everything in them. Work files of a pull in progress (names starting with '.') are left out.
fn cached_models(dir: &std::path::Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<(String, u64)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            if meta.is_file() {
                Some((name, meta.len()))
            } else if gemma_core::convert::is_model_folder(&e.path()) {
                Some((name + "/", folder_bytes(&e.path())))
            } else {
                None
            }
        })
        .collect();
    files.sort();
    files
}

fn folder_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

pub fn sysinfo(args: &SysinfoArgs) -> Result<()> {
    let cpu = cpu_model();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let features = detected_features();
    let quant_types = supported_quant_types();
    let cuda = cfg!(feature = "cuda");
    let dir = gemma_fetch::models_dir();
    let models = cached_models(&dir);
    let mut out = std::io::stdout().lock();
    if args.json {
        let obj = json!({
            "cpu_model": cpu,
            "logical_cores": cores,
            "arch": std::env::consts::ARCH,
            "cpu_features": features.iter().map(|(f, on)| (f.to_string(), json!(on))).collect::<serde_json::Map<_, _>>(),
            "simd_level": simd_level().to_string(),
            "avx512_vnni": cpu_has_avx512_vnni(),
            "kernel_path": kernel_path(),
            "quant_types": quant_types,
            "features": { "cuda": cuda },
            "version": env!("CARGO_PKG_VERSION"),
            "models_dir": dir.display().to_string(),
            "models": models.iter().map(|(name, bytes)| json!({ "file": name, "bytes": bytes })).collect::<Vec<_>>(),
        });
        writeln!(out, "{obj}")?;
        return Ok(());
    }
    writeln!(out, "gemma {} ({})", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH)?;
    writeln!(out, "cpu: {}", cpu.as_deref().unwrap_or("unknown"))?;
    writeln!(out, "logical cores: {cores}")?;
    let on: Vec<&str> = features.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect();
    writeln!(out, "cpu features: {}", if on.is_empty() { "none of interest".to_owned() } else { on.join(" ") })?;
    writeln!(out, "avx512 vnni: {}", if cpu_has_avx512_vnni() { "yes" } else { "no" })?;
    writeln!(out, "kernel path: {}", kernel_path())?;
    writeln!(out, "quantization types: {}", quant_types.join(" "))?;
    writeln!(out, "build features: cuda={}", if cuda { "yes" } else { "no" })?;
    writeln!(out, "model cache: {}", dir.display())?;
    if models.is_empty() {
        writeln!(out, "  (no files)")?;
    }
    for (name, bytes) in &models {
        writeln!(out, "  {name}  {bytes} bytes ({})", human_bytes(*bytes))?;
    }
    Ok(())
}
