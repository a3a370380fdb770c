//! ggml's two rounding rules. Which one a quantizer uses changes stored bytes on ties, so each format uses the
//! one its llama.cpp reference uses.

/// ggml's `nearest_int`: round to nearest, ties to even, via the 1.5*2^23 magic constant (valid for
/// |x| <= 4194303, the range every caller stays in; outside it the result is garbage, never a panic).
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C's `roundf`: round to nearest, ties away from zero (used by the Q8_0/Q8_1 reference quantizers).
#[inline(always)]
pub(crate) fn round_away(x: f32) -> f32 {
    x.round()
}

/// `(|m|, m)` for the value `m` of largest magnitude, the first of equals (ggml's `amax`/`max` scan, which every
/// symmetric scale search starts from: the sign of `m` decides which end of the code range it maps to). `(0, 0)`
/// for no values or all zeros; NaNs are passed over.
#[inline]
pub(crate) fn largest_magnitude(values: impl IntoIterator<Item = f32>) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for v in values {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        let cases = [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (-2.5, -2), (0.49999997, 0), (3.7, 4)];
        for (x, want) in cases {
            assert_eq!(nearest_int(x), want, "{x}");
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
        assert_eq!(nearest_int(-127.0), -127);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
    }

    #[test]
    fn largest_magnitude_keeps_the_sign_and_the_first_of_equals() {
        assert_eq!(largest_magnitude([1.0, -3.0, 2.0]), (3.0, -3.0));
        assert_eq!(largest_magnitude([3.0, -3.0]), (3.0, 3.0));
        assert_eq!(largest_magnitude([-3.0, 3.0]), (3.0, -3.0));
        assert_eq!(largest_magnitude([f32::NAN, -1.0]), (1.0, -1.0));
        assert_eq!(largest_magnitude([]), (0.0, 0.0));
    }

    #[test]
    fn round_away_rounds_ties_away_from_zero() {
        let cases = [(0.5, 1.0), (1.5, 2.0), (2.5, 3.0), (-0.5, -1.0), (-2.5, -3.0), (0.49999997, 0.0)];
        for (x, want) in cases {
            assert_eq!(round_away(x), want, "{x}");
        }
    }
}
