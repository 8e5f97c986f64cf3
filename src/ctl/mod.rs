//! `nexusctl`'s commands. [`messaging`] talks to a gateway (pub, sub, req, info); [`admin`]
//! talks to the control plane (routes, schemas, keys, regions, gateways, topology); [`audit`]
//! reads its audit trail; [`wait`] holds a config change until every live gateway applied
//! it; [`links`] reads each gateway's own view of its cluster and federation links;
//! [`trace`] prints what happened to one message at every gateway (`nexusctl trace`). This
//! module holds what both share: output formats, tables and parsing helpers.

pub mod admin;
pub mod audit;
pub mod links;
pub mod live;
pub mod messaging;
pub mod trace;
pub mod wait;

use std::time::Duration;

use clap::ValueEnum;

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables and lines.
    Text,
    /// One JSON document per result, for scripts.
    Json,
}

/// Parses `500ms`, `2s`, `5m`, `1h`, `30d`; a bare number is milliseconds. A negative value
/// (`-5s`, which the flags accept as a value rather than an option) is refused by name.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Some(rest) = s.strip_prefix('-') {
        return Err(format!(
            "{s:?} is negative: durations count forward from now (use e.g. {rest})"
        ));
    }
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "ms"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 2s, 5m, 1h or 30d"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86_400)),
        _ => Err(format!(
            "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
        )),
    }
}

/// An error and its causes on one line, each said once: gRPC and hyper errors often repeat
/// their source's text in their own ("tcp connect error: tcp connect error: Connection
/// refused"), and anyhow's `{:#}` would print every layer.
pub fn describe_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

/// Prints rows as aligned columns under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints a JSON value on one line.
pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

/// Formats Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`, or `-` for 0.
pub fn format_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn errors_say_each_cause_once() {
        let e = anyhow::Error::new(Layer(
            "tcp connect error",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer("Connection refused (os error 111)", None))),
            ))),
        ))
        .context("cannot reach the gateway at http://127.0.0.1:1");
        assert_eq!(
            describe_error(&e),
            "cannot reach the gateway at http://127.0.0.1:1: tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn durations_and_dates() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert_eq!(format_ms(0), "-");
        assert_eq!(format_ms(1_767_225_600_000), "2026-01-01 00:00:00");
    }
}

/// Reads a secret (an API key, the admin key) from a file: the first line, trimmed. Secrets
/// come from files or the environment so they never show in `ps`.
pub fn read_secret_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim().to_owned();
    if secret.is_empty() {
        anyhow::bail!("the {what} file {} is empty", path.display());
    }
    Ok(secret)
}

/// TLS towards https:// gateways and control planes: the CA to trust and an optional client
/// certificate (an admin certificate from `nexus certs --admin`).
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// Configures `endpoint` for TLS when `url` is https://.
    pub fn apply(
        &self,
        endpoint: tonic::transport::Endpoint,
        url: &str,
    ) -> anyhow::Result<tonic::transport::Endpoint> {
        use anyhow::Context;
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let mut tls = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint
            .tls_config(tls)
            .with_context(|| format!("TLS setup for {url}"))
    }
}
