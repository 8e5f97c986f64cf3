//! `nexus certs`: issues what a deployment needs, signed by one cluster CA
//! (docs/security.md): per-gateway certificates (adapters, federation and cluster links, and
//! the gateway's identity towards the control plane), control-plane and console certificates,
//! and admin client certificates.
//!
//! Re-running it with the same `--out` reuses the CA there and re-issues the certificates
//! asked for: that is rotation. Every file is written to a temporary name and renamed, so a
//! process reloading its files never reads half of one; keys are readable only by the owner.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nexus_tls::issue::{CertificateAuthority, IssuedPem, Role, Validity};

#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    /// Directory for ca.pem (and ca-key.pem) and the certificates; an existing CA there is
    /// reused.
    #[arg(long)]
    pub out: PathBuf,
    /// A gateway: `<region>/<gateway-id>`, optionally `@host,host` with the names or IP
    /// addresses adapters dial (repeatable). Writes gateways/<region>/<id>.pem and -key.pem.
    #[arg(long = "gateway")]
    pub gateways: Vec<String>,
    /// Hosts (names or IP addresses) of the control plane: writes control-plane.pem.
    #[arg(long, value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// Hosts of the web console: writes console.pem.
    #[arg(long, value_delimiter = ',')]
    pub console: Vec<String>,
    /// An admin client certificate for `nexusctl` (repeatable): writes admin/<name>.pem.
    #[arg(long = "admin")]
    pub admins: Vec<String>,
    /// An adapter client certificate (repeatable): writes clients/<name>.pem, issued for
    /// `<name>.client.nexus`, which gateways requiring client certificates accept and API keys
    /// can be bound to (`nexusctl keys bind`).
    #[arg(long = "client")]
    pub clients: Vec<String>,
    /// Validity of the issued certificates, in days (from --not-before).
    #[arg(long, default_value_t = 397)]
    pub days: u32,
    /// Start of the issued certificates' validity, an RFC 3339 time
    /// (`2027-01-31T00:00:00Z`); default: an hour ago. The CA is not affected.
    #[arg(long, value_name = "TIME")]
    pub not_before: Option<String>,
    /// End of the issued certificates' validity, an RFC 3339 time; overrides --days. A time
    /// in the past issues expired certificates (with a warning), to test that clients refuse
    /// them.
    #[arg(long, value_name = "TIME")]
    pub not_after: Option<String>,
    /// Make a new CA even when --out holds one (a CA rotation: see docs/security.md).
    #[arg(long)]
    pub new_ca: bool,
}

/// One gateway named on the command line.
#[derive(Debug, PartialEq, Eq)]
struct GatewaySpec {
    region: String,
    id: String,
    hosts: Vec<String>,
}

fn parse_gateway(s: &str) -> anyhow::Result<GatewaySpec> {
    let (name, hosts) = match s.split_once('@') {
        Some((n, h)) => (n, h.split(',').map(str::trim).map(str::to_owned).collect()),
        None => (s, Vec::new()),
    };
    let Some((region, id)) = name.split_once('/') else {
        bail!("--gateway {s:?} must be <region>/<gateway-id>[@host,host]");
    };
    let label_ok = |t: &str| {
        !t.is_empty()
            && t.len() <= 63
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !label_ok(region) || !label_ok(id) {
        bail!("--gateway {s:?}: region and gateway id must be 1-63 letters, digits, '-' or '_'");
    }
    Ok(GatewaySpec {
        region: region.to_owned(),
        id: id.to_owned(),
        hosts,
    })
}

/// Writes `text` to `path` through a temporary file and a rename; `private` files are 0600.
fn write_atomic(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("pem.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = opts
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn write_pair(dir: &Path, name: &str, pem: &IssuedPem) -> anyhow::Result<PathBuf> {
    // The key first: a process watching both reloads once the certificate matches it.
    write_atomic(&dir.join(format!("{name}-key.pem")), &pem.key_pem, true)?;
    let cert = dir.join(format!("{name}.pem"));
    write_atomic(&cert, &pem.cert_pem, false)?;
    Ok(cert)
}

/// Runs `nexus certs`; returns the files written, for the caller to print.
pub fn run(args: &CertsArgs) -> anyhow::Result<Vec<PathBuf>> {
    let gateways: Vec<GatewaySpec> = args
        .gateways
        .iter()
        .map(|g| parse_gateway(g))
        .collect::<anyhow::Result<_>>()?;
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    let validity = Validity::between(
        args.not_before.as_deref(),
        args.not_after.as_deref(),
        args.days,
    )?;
    if validity.is_past() {
        eprintln!(
            "warning: --not-after {} is in the past: the certificates issued are expired, and clients will refuse them",
            validity.not_after_text()
        );
    }
    let ca_cert = args.out.join("ca.pem");
    let ca_key = args.out.join("ca-key.pem");
    let mut written = Vec::new();
    let ca = if ca_cert.exists() && !args.new_ca {
        let cert = std::fs::read_to_string(&ca_cert)
            .with_context(|| format!("cannot read {}", ca_cert.display()))?;
        let key = std::fs::read_to_string(&ca_key).with_context(|| {
            format!(
                "{} exists but its key {} cannot be read (issue elsewhere, or pass --new-ca)",
                ca_cert.display(),
                ca_key.display()
            )
        })?;
        CertificateAuthority::from_pem(&cert, &key)
            .with_context(|| format!("{} is not a usable CA", ca_cert.display()))?
    } else {
        let ca = CertificateAuthority::generate("Nexus cluster CA", Validity::days(3650))?;
        write_atomic(&ca_key, ca.key_pem(), true)?;
        write_atomic(&ca_cert, ca.cert_pem(), false)?;
        written.extend([ca_cert.clone(), ca_key.clone()]);
        ca
    };
    for g in &gateways {
        let pem = ca.issue(
            &Role::Gateway {
                region: g.region.clone(),
                id: g.id.clone(),
                hosts: g.hosts.clone(),
            },
            validity,
        )?;
        written.push(write_pair(
            &args.out.join("gateways").join(&g.region),
            &g.id,
            &pem,
        )?);
    }
    if !args.control_plane.is_empty() {
        let role = Role::ControlPlane {
            hosts: args.control_plane.clone(),
        };
        written.push(write_pair(
            &args.out,
            "control-plane",
            &ca.issue(&role, validity)?,
        )?);
    }
    if !args.console.is_empty() {
        let role = Role::Console {
            hosts: args.console.clone(),
        };
        written.push(write_pair(
            &args.out,
            "console",
            &ca.issue(&role, validity)?,
        )?);
    }
    for name in &args.admins {
        let role = Role::Admin { name: name.clone() };
        written.push(write_pair(
            &args.out.join("admin"),
            name,
            &ca.issue(&role, validity)?,
        )?);
    }
    for name in &args.clients {
        if name.is_empty()
            || name.len() > 63
            || !name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        {
            bail!("--client {name:?} must be a DNS label (a-z, 0-9, -; at most 63 characters)");
        }
        let role = Role::Client { name: name.clone() };
        written.push(write_pair(
            &args.out.join("clients"),
            name,
            &ca.issue(&role, validity)?,
        )?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_specs_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_gateway("eu-west/gw-1@10.0.0.5,gw1.example").unwrap(),
            GatewaySpec {
                region: "eu-west".into(),
                id: "gw-1".into(),
                hosts: vec!["10.0.0.5".into(), "gw1.example".into()],
            }
        );
        assert!(
            parse_gateway("gw-1")
                .unwrap_err()
                .to_string()
                .contains("<region>/")
        );
        assert!(parse_gateway("eu west/gw").is_err());
    }
}
