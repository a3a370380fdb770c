//! `include/gemma.h` is written by hand: these tests hold it and the Rust source together (every exported
//! function declared, nothing declared that is not exported, the same codes and constants).

#![warn(clippy::undocumented_unsafe_blocks)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gemma_capi::{cache_type_enumerators, GemmaStopReason, Status, GEMMA_NO_TOKEN, GEMMA_SEED_RANDOM};

fn crate_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// The header without its comments, so that names in the prose do not count as declarations.
fn header_code() -> String {
    let header = crate_file("include/gemma.h");
    let mut code = String::new();
    let mut rest = header.as_str();
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        let end = rest[start..].find("*/").expect("comment closed") + start + 2;
        rest = &rest[end..];
    }
    code.push_str(rest);
    code
}

/// Identifiers starting with `prefix` and followed (after spaces) by `next`.
fn names_followed_by(text: &str, prefix: &str, next: char) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices(prefix) {
        if text[..start].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let len = text[start..].find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(text.len() - start);
        let after = text[start + len..].trim_start();
        if after.starts_with(next) {
            names.insert(text[start..start + len].to_string());
        }
    }
    names
}

/// The `gemma_*` functions the crate exports: `#[no_mangle]` functions with the C ABI.
fn exported_functions() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(at) = line.find("extern \"C\" fn ") else { continue };
            let name: String =
                line[at + 14..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
            // The attribute is on the line before (after any doc comment).
            let exported = i > 0 && lines[i - 1].trim() == "#[no_mangle]";
            assert!(exported || !name.starts_with("gemma_"), "{name} has the C ABI but is not #[no_mangle]");
            if exported {
                assert!(name.starts_with("gemma_"), "exported function {name} lacks the gemma_ prefix");
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn every_exported_function_is_declared_in_the_header_and_nothing_else() {
    let exported = exported_functions();
    let declared = names_followed_by(&header_code(), "gemma_", '(');
    assert!(exported.len() >= 14, "found only {exported:?}");
    let undeclared: Vec<_> = exported.difference(&declared).collect();
    let unexported: Vec<_> = declared.difference(&exported).collect();
    assert!(undeclared.is_empty(), "exported but not in gemma.h: {undeclared:?}");
    assert!(unexported.is_empty(), "in gemma.h but not exported: {unexported:?}");
}

/// The enumerators of the header (`NAME = VALUE`) with their values.
fn enumerators(code: &str) -> BTreeMap<String, i32> {
    names_followed_by(code, "GEMMA_", '=')
        .into_iter()
        .map(|name| {
            let at = code.find(&format!("{name} ")).or_else(|| code.find(&format!("{name}="))).unwrap();
            let value = code[at + name.len()..].trim_start().trim_start_matches('=').trim_start();
            let digits: String = value.chars().take_while(|c| *c == '-' || c.is_ascii_digit()).collect();
            let parsed = digits.parse().unwrap_or_else(|_| panic!("{name} = {value:.20}"));
            (name, parsed)
        })
        .collect()
}

#[test]
fn header_codes_and_constants_are_the_crates() {
    let code = header_code();
    let mut expected: BTreeMap<String, i32> =
        Status::ALL.into_iter().map(|s| (s.c_name().to_string(), s as i32)).collect();
    expected.extend(GemmaStopReason::ALL.into_iter().map(|r| (r.c_name().to_string(), r as i32)));
    expected.extend(cache_type_enumerators());
    assert_eq!(enumerators(&code), expected, "enumerators of gemma.h");
    assert_eq!(GEMMA_SEED_RANDOM, 0xFFFF_FFFF);
    assert!(code.contains("#define GEMMA_SEED_RANDOM 0xFFFFFFFFu"));
    assert_eq!(GEMMA_NO_TOKEN, -1);
    assert!(code.contains("#define GEMMA_NO_TOKEN (-1)"));
}

#[test]
fn error_strings_describe_every_code() {
    for status in Status::ALL {
        // SAFETY: gemma_error_string returns a static NUL-terminated string.
        let text = unsafe { std::ffi::CStr::from_ptr(gemma_capi::gemma_error_string(status as i32)) };
        assert_eq!(text, status.description());
        assert!(!text.is_empty());
    }
    // SAFETY: as above.
    let unknown = unsafe { std::ffi::CStr::from_ptr(gemma_capi::gemma_error_string(12345)) };
    assert_eq!(unknown.to_str().unwrap(), "unknown status");
}
