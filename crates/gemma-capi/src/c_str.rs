//! Strings across the boundary: C strings read as checked UTF-8, and strings handed to C in `malloc`ed
//! buffers (freed with `gemma_string_free`).

use std::borrow::Cow;
use std::ffi::{c_char, c_void, CStr};

use crate::error::CapiError;

extern "C" {
    // The C library's allocator: a buffer handed out this way is freed with the length unknown to Rust, and
    // a model's text may contain NUL bytes, so a Rust allocation could not be given back safely from a
    // `char *` alone.
    fn malloc(size: usize) -> *mut c_void;
    fn free(ptr: *mut c_void);
}

/// The UTF-8 text of the NUL-terminated string at `ptr`; `what` names the argument in the error.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and unchanged for `'a`.
pub unsafe fn read_str<'a>(ptr: *const c_char, what: &'static str) -> Result<&'a str, CapiError> {
    if ptr.is_null() {
        return Err(CapiError::NullPointer(what));
    }
    // SAFETY: not NULL, and NUL-terminated and live for 'a by this function's contract.
    unsafe { read_non_null_str(ptr, what.into()) }
}

/// [`read_str`] for an argument named at run time (`texts[3]`).
///
/// # Safety
/// As [`read_str`].
pub unsafe fn read_str_named<'a>(ptr: *const c_char, what: impl FnOnce() -> String) -> Result<&'a str, CapiError> {
    if ptr.is_null() {
        return Err(CapiError::InvalidArgument(format!("{} is NULL", what())));
    }
    // SAFETY: not NULL, and NUL-terminated and live for 'a by this function's contract.
    unsafe { read_non_null_str(ptr, what().into()) }
}

/// # Safety
/// `ptr` is not NULL and points to a NUL-terminated string that stays valid and unchanged for `'a`.
unsafe fn read_non_null_str<'a>(ptr: *const c_char, what: Cow<'static, str>) -> Result<&'a str, CapiError> {
    // SAFETY: not NULL, and NUL-terminated and live for 'a by this function's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|e| CapiError::InvalidUtf8 { what, valid_up_to: e.valid_up_to() })
}

/// `text` copied into a `malloc`ed, NUL-terminated buffer (the terminator follows `text.len()` bytes; a NUL
/// inside the text stays), or NULL if the allocation fails.
pub fn to_malloced(text: &str) -> *mut c_char {
    // SAFETY: malloc takes any size; the result is checked for NULL before use.
    let buf = unsafe { malloc(text.len() + 1) }.cast::<u8>();
    if buf.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: `buf` holds text.len() + 1 bytes and cannot overlap `text`, a live Rust string.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf, text.len());
        *buf.add(text.len()) = 0;
    }
    buf.cast()
}

/// Frees a buffer of [`to_malloced`].
///
/// # Safety
/// `ptr` is NULL or came from [`to_malloced`] and was not freed before.
pub unsafe fn free_malloced(ptr: *mut c_char) {
    // SAFETY: by the contract, `ptr` is NULL (free ignores it) or a live malloc allocation.
    unsafe { free(ptr.cast()) }
}

/// Writes `value` through `out` when the caller asked for it (`out` not NULL).
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub unsafe fn write_opt<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: not NULL, and valid for a write by the contract.
        unsafe { out.write(value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_checked_utf8() {
        // SAFETY: both literals are NUL-terminated statics.
        unsafe {
            assert_eq!(read_str(c"héllo".as_ptr(), "text").unwrap(), "héllo");
            let bad = read_str(c"ab\xff".as_ptr(), "text").unwrap_err();
            assert_eq!(bad.to_string(), "text is not valid UTF-8 (invalid byte at offset 2)");
            assert_eq!(read_str(std::ptr::null(), "path").unwrap_err().to_string(), "path is NULL");
            let bad = read_str_named(c"\xff".as_ptr(), || "texts[1]".into()).unwrap_err();
            assert_eq!(bad.to_string(), "texts[1] is not valid UTF-8 (invalid byte at offset 0)");
            let null = read_str_named(std::ptr::null(), || "texts[2]".into()).unwrap_err();
            assert_eq!((null.to_string(), null.status()), ("texts[2] is NULL".into(), crate::Status::InvalidArgument));
        }
    }

    #[test]
    fn malloced_strings_keep_inner_nuls_and_end_in_one() {
        let p = to_malloced("a\0b");
        assert!(!p.is_null());
        // SAFETY: `p` holds 4 bytes from to_malloced and is freed once.
        unsafe {
            assert_eq!(std::slice::from_raw_parts(p.cast::<u8>(), 4), b"a\0b\0");
            free_malloced(p);
        }
    }
}
