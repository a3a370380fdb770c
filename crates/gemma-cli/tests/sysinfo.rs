//! `gemma sysinfo`: checked against what the test itself reads from the machine and the model cache.

use std::process::Command;

use gemma_compression::{quant_format, simd_level, GgmlType};

fn sysinfo(args: &[&str], models_dir: Option<&std::path::Path>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemma"));
    cmd.arg("sysinfo").args(args);
    if let Some(dir) = models_dir {
        cmd.env("GEMMA_MODELS", dir);
    }
    let out = cmd.output().expect("run gemma sysinfo");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn json_report_matches_the_machine_and_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-model.gguf"), vec![0u8; 1234]).unwrap();
    std::fs::write(dir.path().join("b.gguf"), b"xy").unwrap();
    let v: serde_json::Value = serde_json::from_str(sysinfo(&["--json"], Some(dir.path())).trim()).unwrap();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(v["logical_cores"], cores);
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
        let name = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).trim()));
        if let Some(name) = name {
            assert_eq!(v["cpu_model"], name);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(v["cpu_features"]["avx2"], is_x86_feature_detected!("avx2"));
        assert_eq!(v["cpu_features"]["fma"], is_x86_feature_detected!("fma"));
        assert_eq!(v["cpu_features"]["f16c"], is_x86_feature_detected!("f16c"));
        assert_eq!(v["cpu_features"]["avx512vnni"], is_x86_feature_detected!("avx512vnni"));
    }
    assert_eq!(v["avx512_vnni"], gemma_compression::cpu_has_avx512_vnni());
    assert_eq!(v["simd_level"], simd_level().to_string());
    assert!(v["kernel_path"].as_str().unwrap().starts_with(&simd_level().to_string()));

    let listed: Vec<&str> = v["quant_types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let expected: Vec<&str> = GgmlType::ALL.iter().filter(|t| quant_format(**t).is_ok()).map(|t| t.name()).collect();
    assert_eq!(listed, expected);
    // The types of the two real models are among them.
    assert!(listed.contains(&"q4_K") && listed.contains(&"q4_1") && listed.contains(&"q6_K"), "{listed:?}");
    assert!(listed.contains(&"iq4_nl") && listed.contains(&"iq4_xs"), "{listed:?}");

    assert_eq!(v["features"]["cuda"], cfg!(feature = "cuda"));
    assert_eq!(v["models_dir"], dir.path().display().to_string());
    assert_eq!(
        v["models"],
        serde_json::json!([{"file": "a-model.gguf", "bytes": 1234}, {"file": "b.gguf", "bytes": 2}])
    );
}

#[test]
fn text_report_lists_the_real_model_cache() {
    let text = sysinfo(&[], None);
    let dir = gemma_fetch::models_dir();
    assert!(text.contains(&format!("model cache: {}", dir.display())), "{text}");
    let gemma = gemma_fetch::resolve_model(gemma_fetch::DEFAULT_MODEL).unwrap();
    let size = std::fs::metadata(&gemma).unwrap().len();
    let name = gemma.file_name().unwrap().to_string_lossy().into_owned();
    assert!(text.contains(&format!("{name}  {size} bytes")), "{text}");
    assert!(text.contains(&format!("kernel path: {}", simd_level())), "{text}");
    assert!(text.contains("build features: cuda=no") || cfg!(feature = "cuda"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("logical cores: ")));
}
