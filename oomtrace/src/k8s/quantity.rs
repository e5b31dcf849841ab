//! Memory quantities of a pod spec (`"128Mi"`, `"0.5Gi"`, `"1e9"`) as exact byte counts.
//!
//! Exact decimal arithmetic on purpose: `kube_quantity` 0.9 goes through `f64` and truncates
//! before scaling, so it reads `0.5Gi` and `1.25Mi` as 0 and 1 MiB, `Mi` (no number) as 0,
//! and rejects `1E`/`1Ei` (the `E` is taken for an exponent). A wrong limit in an OOM report
//! is worse than none.

/// Parses a Kubernetes resource quantity (`"128Mi"`, `"1Gi"`, `"1G"`, `"500M"`, `"1e9"`,
/// `"123456"`, `"0.5Gi"`, `"100k"`, `"1.5E3"`...) into a whole number of bytes, rounding a
/// fractional result up like Kubernetes' `Quantity.Value()` does.
///
/// Returns `None` for anything that is not a valid non-negative quantity, or does not fit
/// in a `u64`. Leading/trailing whitespace is tolerated.
pub fn parse_memory_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => {
            if f.contains('.') {
                return None;
            }
            (i, f)
        }
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let int_part = int_part.trim_start_matches('0');
    let frac_part = frac_part.trim_end_matches('0');
    let mut mantissa: u128 = 0;
    for c in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(c - b'0'))?;
    }
    let frac_len = i32::try_from(frac_part.len()).ok()?;

    let (pow2, mut pow10): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => {
            // Decimal exponent: e3, E-2, e+6.
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            (0, exp.parse::<i32>().ok()?)
        }
    };
    pow10 -= frac_len;
    if mantissa == 0 {
        return Some(0);
    }
    let scaled = mantissa.checked_mul(1u128.checked_shl(pow2)?)?;
    let bytes = if pow10 >= 0 {
        scaled.checked_mul(10u128.checked_pow(pow10.unsigned_abs())?)?
    } else {
        match 10u128.checked_pow(pow10.unsigned_abs()) {
            // ceil(scaled / div); scaled > 0.
            Some(div) => (scaled - 1) / div + 1,
            // A divisor beyond u128: the value is a positive amount below one byte.
            None => 1,
        }
    };
    u64::try_from(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        let cases: &[(&str, Option<u64>)] = &[
            ("128Mi", Some(128 << 20)),
            ("1Gi", Some(1 << 30)),
            ("1G", Some(1_000_000_000)),
            ("500M", Some(500_000_000)),
            ("1e9", Some(1_000_000_000)),
            ("1E9", Some(1_000_000_000)),
            ("1e+3", Some(1000)),
            ("123456", Some(123_456)),
            ("0.5Gi", Some(512 << 20)),
            ("100k", Some(100_000)),
            ("1Ki", Some(1024)),
            ("2Ti", Some(2 << 40)),
            ("1Pi", Some(1 << 50)),
            ("1Ei", Some(1 << 60)),
            ("1E", Some(1_000_000_000_000_000_000)),
            ("1P", Some(1_000_000_000_000_000)),
            ("1T", Some(1_000_000_000_000)),
            ("0", Some(0)),
            ("0Gi", Some(0)),
            ("+1Ki", Some(1024)),
            (".5Ki", Some(512)),
            ("5.", Some(5)),
            ("1.5", Some(2)),   // rounded up
            ("100m", Some(1)),  // 0.1 byte, rounded up
            ("1500m", Some(2)), // 1.5 bytes
            ("1e-3", Some(1)),
            ("12e-1", Some(2)),
            ("1n", Some(1)),
            ("1000000000n", Some(1)),
            ("3000000001n", Some(4)),
            ("1.25Mi", Some(1_310_720)),
            ("0000128Mi", Some(128 << 20)),
            ("1.000Gi", Some(1 << 30)),
            (" 64Mi ", Some(64 << 20)),
            ("16Ei", None), // overflows u64
            ("99999999999999999999999", None),
            ("1e40", None),
            ("", None),
            (".", None),
            ("Mi", None),
            ("-1Gi", None),
            ("1..2", None),
            ("1.2.3", None),
            ("1 Gi", None),
            ("1GiB", None),
            ("1K", None),
            ("1mi", None),
            ("1e", None),
            ("1e+", None),
            ("1e1.5", None),
            ("1e99999", None),
            ("abc", None),
            ("0x10", None),
            ("1Gi1", None),
            ("１Gi", None),
            ("1.0e-999", Some(1)), // a positive amount below one byte
        ];
        for (input, want) in cases {
            assert_eq!(parse_memory_quantity(input), *want, "parse {input:?}");
        }
    }

    #[test]
    fn quantity_parser_never_panics() {
        let alphabet = [
            "", "0", "1", "9", ".", "e", "E", "-", "+", "i", "K", "k", "M", "m", "G", "n", "u",
            "x", " ",
        ];
        // All strings of up to 4 symbols from the alphabet.
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in &inputs {
                for a in alphabet {
                    next.push(format!("{s}{a}"));
                }
            }
            inputs = next;
        }
        for s in inputs {
            let _ = parse_memory_quantity(&s);
        }
        let _ = parse_memory_quantity(&"9".repeat(10_000));
        let _ = parse_memory_quantity(&format!("0.{}1", "0".repeat(10_000)));
        assert_eq!(
            parse_memory_quantity(&format!("0.{}1", "0".repeat(100))),
            Some(1)
        );
    }

    proptest::proptest! {
        #[test]
        fn quantities_never_panic(s in "\\PC{0,40}") {
            let _ = parse_memory_quantity(&s);
        }
    }
}
