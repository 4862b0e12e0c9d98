//! Go `time.Duration` parsing and printing, as Consul applies them to `TTL`, `LockDelay`, `?wait`
//! and `?max_stale`.
//!
//! Consul echoes Go's own error texts (`time: missing unit in duration "30"`) inside its answers,
//! and prints limits the Go way (`24h0m0s`), so the dev server reproduces both byte for byte
//! rather than using a Rust duration crate with different rules.

/// Nanoseconds in one of each unit Go accepts.
const UNITS: &[(&str, u64)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // U+00B5 MICRO SIGN
    ("\u{3bc}s", 1_000), // U+03BC GREEK SMALL LETTER MU
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

const NANOS_PER_SECOND: u64 = 1_000_000_000;
const NANOS_PER_MICRO: u64 = 1_000;
const NANOS_PER_MILLI: u64 = 1_000_000;
/// The largest magnitude a Go duration may carry before the sign is applied.
const MAGNITUDE_LIMIT: u64 = 1 << 63;

/// Quotes like Go's `time.quote`: double quotes, with `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses a Go duration string into signed nanoseconds, e.g. `"1m30s"`, `"-1.5h"`, `"100ms"`.
/// The error text is Go's, so it can be echoed inside Consul-shaped messages.
pub(crate) fn parse(text: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", quote(text));
    let mut s = text;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part.
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut whole: u64 = 0;
        for b in s[..digits].bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .filter(|v| *v <= MAGNITUDE_LIMIT)
                .ok_or_else(invalid)?;
        }
        let had_whole = digits > 0;
        s = &s[digits..];
        // Fraction part: digits past what fits are consumed and ignored, as Go does.
        let mut fraction: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut had_fraction = false;
        if let Some(rest) = s.strip_prefix('.') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let mut overflow = false;
            for b in rest[..digits].bytes() {
                if overflow {
                    continue;
                }
                if fraction > (i64::MAX as u64) / 10 {
                    overflow = true;
                    continue;
                }
                let next = fraction * 10 + u64::from(b - b'0');
                if next > i64::MAX as u64 {
                    overflow = true;
                    continue;
                }
                fraction = next;
                scale *= 10.0;
            }
            had_fraction = digits > 0;
            s = &rest[digits..];
        }
        if !had_whole && !had_fraction {
            return Err(invalid());
        }
        let unit_len = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", quote(text)));
        }
        let unit_text = &s[..unit_len];
        s = &s[unit_len..];
        let unit = UNITS
            .iter()
            .find(|(name, _)| *name == unit_text)
            .map(|(_, nanos)| *nanos)
            .ok_or_else(|| {
                format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit_text),
                    quote(text)
                )
            })?;
        if whole > MAGNITUDE_LIMIT / unit {
            return Err(invalid());
        }
        let mut value = whole * unit;
        if fraction > 0 {
            // Go computes the fractional part in float64 and truncates; so do we.
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > MAGNITUDE_LIMIT {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(value)
            .filter(|v| *v <= MAGNITUDE_LIMIT)
            .ok_or_else(invalid)?;
    }
    if negative {
        // -(1<<63) is representable, so wrapping is exact here.
        return Ok((total as i64).wrapping_neg());
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// Formats nanoseconds the way Go's `Duration.String` does: `24h0m0s`, `10s`, `1.5s`, `100ms`,
/// `0s`.
pub(crate) fn format(nanos: i64) -> String {
    let negative = nanos < 0;
    let mut u = nanos.unsigned_abs();
    let mut out = String::new();
    if u < NANOS_PER_SECOND {
        if u == 0 {
            return "0s".to_string();
        }
        let (precision, unit) = if u < NANOS_PER_MICRO {
            (0, "ns")
        } else if u < NANOS_PER_MILLI {
            (3, "\u{b5}s")
        } else {
            (6, "ms")
        };
        let (frac, rest) = fraction(u, precision);
        out = format!("{rest}{frac}{unit}");
    } else {
        let (frac, seconds) = fraction(u, 9);
        u = seconds;
        let secs = u % 60;
        u /= 60;
        if u > 0 {
            let minutes = u % 60;
            u /= 60;
            if u > 0 {
                out.push_str(&format!("{u}h"));
            }
            out.push_str(&format!("{minutes}m"));
        }
        out.push_str(&format!("{secs}{frac}s"));
    }
    if negative {
        out.insert(0, '-');
    }
    out
}

/// Splits off the lowest `precision` decimal digits as Go's `fmtFrac` does: a `.digits` string
/// without trailing zeros (empty when they are all zero) and the remaining integer part.
fn fraction(value: u64, precision: u32) -> (String, u64) {
    let divisor = 10u64.pow(precision);
    let digits = value % divisor;
    let rest = value / divisor;
    if digits == 0 {
        return (String::new(), rest);
    }
    let padded = format!("{digits:0width$}", width = precision as usize);
    (format!(".{}", padded.trim_end_matches('0')), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("15s"), Ok(15 * S));
        assert_eq!(parse("1m30s"), Ok(90 * S));
        assert_eq!(parse("1.5h"), Ok(5400 * S));
        assert_eq!(parse("100ms"), Ok(100_000_000));
        assert_eq!(parse("20ns"), Ok(20));
        assert_eq!(parse("3\u{b5}s"), Ok(3000));
        assert_eq!(parse("2us"), Ok(2000));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("0s"), Ok(0));
        assert_eq!(parse("-5s"), Ok(-5 * S));
        assert_eq!(parse("+5s"), Ok(5 * S));
        assert_eq!(parse(".5s"), Ok(S / 2));
        assert_eq!(parse("1.s"), Ok(S));
        assert_eq!(parse("2562047h47m16.854775807s"), Ok(i64::MAX));
        assert_eq!(parse("-2562047h47m16.854775808s"), Ok(i64::MIN));
    }

    #[test]
    fn reports_go_errors() {
        assert_eq!(
            parse("30"),
            Err(r#"time: missing unit in duration "30""#.to_string())
        );
        assert_eq!(parse(""), Err(r#"time: invalid duration """#.to_string()));
        assert_eq!(
            parse("abc"),
            Err(r#"time: invalid duration "abc""#.to_string())
        );
        assert_eq!(parse("."), Err(r#"time: invalid duration ".""#.to_string()));
        assert_eq!(parse("-"), Err(r#"time: invalid duration "-""#.to_string()));
        assert_eq!(
            parse("5x"),
            Err(r#"time: unknown unit "x" in duration "5x""#.to_string())
        );
        assert_eq!(
            parse("2562047h47m16.854775808s"),
            Err(r#"time: invalid duration "2562047h47m16.854775808s""#.to_string())
        );
        assert!(parse("9999999999999999999h").is_err());
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(0), "0s");
        assert_eq!(format(10 * S), "10s");
        assert_eq!(format(24 * 3600 * S), "24h0m0s");
        assert_eq!(format(90 * S), "1m30s");
        assert_eq!(format(3600 * S + 1), "1h0m0.000000001s");
        assert_eq!(format(S + S / 2), "1.5s");
        assert_eq!(format(100_000_000), "100ms");
        assert_eq!(format(1_500_000), "1.5ms");
        assert_eq!(format(1_000), "1\u{b5}s");
        assert_eq!(format(20), "20ns");
        assert_eq!(format(-5 * S), "-5s");
        assert_eq!(format(i64::MIN), "-2562047h47m16.854775808s");
        assert_eq!(format(i64::MAX), "2562047h47m16.854775807s");
    }
}
