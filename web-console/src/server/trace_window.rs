//! The trace page's time window: `since` and `until` as typed, each empty (unbounded), a
//! duration back from now (`90s`, `10m`, `2h`, `7d`), or a UTC time
//! (`2026-12-03 17:30`, seconds optional, `T` accepted for the space). Sans-I/O: the
//! caller passes the current time.

/// Milliseconds for `s`: 0 when empty.
fn point(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    if let Some(unit) = s.chars().last().filter(|c| c.is_ascii_alphabetic())
        && let Ok(n) = s[..s.len() - 1].trim().parse::<u32>()
    {
        let ms = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
        };
        return Ok(now_ms - i64::from(n) * ms);
    }
    absolute(s).ok_or_else(|| {
        format!(
            "{s:?} is neither a duration back from now (10m, 2h) nor a UTC time (2026-12-03 17:30)"
        )
    })
}

/// Unix milliseconds of `YYYY-MM-DD HH:MM[:SS]` (UTC).
fn absolute(s: &str) -> Option<i64> {
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm) = (t.next()??, t.next()??);
    let ss = t.next().unwrap_or(Some(0))?;
    if t.next().is_some() || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000)
}

/// `(since_ms, until_ms)` for the search, 0 for unbounded.
pub fn window(since: &str, until: &str, now_ms: i64) -> Result<(i64, i64), String> {
    let since_ms = point(since, now_ms).map_err(|e| format!("from: {e}"))?;
    let until_ms = point(until, now_ms).map_err(|e| format!("to: {e}"))?;
    if since_ms > 0 && until_ms > 0 && since_ms > until_ms {
        return Err("the window ends before it starts".into());
    }
    Ok((since_ms, until_ms))
}

/// The window in words, for the page.
pub fn describe((since_ms, until_ms): (i64, i64)) -> String {
    let t = |ms: i64| super::time::fmt_ms(ms);
    match (since_ms, until_ms) {
        (0, 0) => String::new(),
        (s, 0) => format!("from {} UTC", t(s)),
        (0, u) => format!("until {} UTC", t(u)),
        (s, u) => format!("from {} to {} UTC", t(s), t(u)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_absolute_and_errors() {
        let now = 1_796_319_661_257;
        assert_eq!(window("", "", now), Ok((0, 0)));
        assert_eq!(window("10m", "", now), Ok((now - 600_000, 0)));
        assert_eq!(
            window("2026-12-03 17:30", "2026-12-03T17:31:05", now),
            Ok((1_796_319_000_000, 1_796_319_065_000))
        );
        assert_eq!(absolute("1970-01-01 00:00"), Some(0));
        assert!(window("10x", "", now).unwrap_err().contains("unit"));
        assert!(
            window("yesterday", "", now)
                .unwrap_err()
                .contains("neither")
        );
        assert!(window("1m", "2h", now).unwrap_err().contains("ends before"));
    }
}
