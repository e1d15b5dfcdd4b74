//! IEEE 754 half precision, the one decoder of the readers (MRC mode 12, NumPy `<f2` fields in
//! `.cs` files).

/// IEEE 754 half → single precision, exact (every half is a single).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exponent = u32::from((h >> 10) & 0x1f);
    let mantissa = u32::from(h & 0x3ff);
    match exponent {
        0 => {
            // Zero or subnormal: mantissa · 2⁻²⁴, exact in f32.
            let magnitude = mantissa as f32 * f32::from_bits(0x3380_0000);
            if sign == 0 { magnitude } else { -magnitude }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    /// Every one of the 65,536 halves against the textbook formula ±(1 + f/1024)·2^(e−15)
    /// (subnormals ±f·2⁻²⁴), computed in f64.
    #[test]
    fn every_half_decodes_to_its_value() {
        for h in 0..=u16::MAX {
            let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
            let e = i32::from((h >> 10) & 0x1f);
            let f = f64::from(h & 0x3ff);
            let want = sign
                * match e {
                    0 => f * 2f64.powi(-24),
                    31 if f == 0.0 => f64::INFINITY,
                    31 => f64::NAN,
                    _ => (1.0 + f / 1024.0) * 2f64.powi(e - 15),
                };
            let got = f64::from(f16_to_f32(h));
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }
}
