//! Issuing certificates: a cluster CA and one certificate per role. `nexus certs` writes them
//! to files; `nexus dev` and the tests keep them in memory.
//!
//! Names carried (and checked by peers):
//! - a gateway: `<region>.fed.nexus` and `<gateway-id>.<region>.fed.nexus` (federation and
//!   cluster links check them, and so does the control plane before a gateway may register
//!   under that id), plus the hosts adapters dial;
//! - the control plane and the console: the hosts they are reached at;
//! - an admin client: `<name>.admin.nexus`, a client-only certificate.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

use crate::TlsError;

/// The name a region's gateways share on federation links.
pub fn region_name(region: &str) -> String {
    format!("{region}.fed.nexus")
}

/// The name of one gateway: what the control plane and cluster peers check.
pub fn gateway_name(region: &str, gateway_id: &str) -> String {
    format!("{gateway_id}.{}", region_name(region))
}

/// The name of an admin client certificate.
pub fn admin_name(name: &str) -> String {
    format!("{name}.admin.nexus")
}

/// The DNS name in an adapter client certificate (`nexus certs --client <name>`), which API
/// key bindings can name.
pub fn client_name(name: &str) -> String {
    format!("{name}.client.nexus")
}

/// The admin name a (CA-verified) client certificate carries, if it is an admin certificate.
pub fn admin_identity(cert: &CertificateDer<'_>) -> Option<String> {
    crate::load::dns_names(cert)
        .into_iter()
        .find_map(|n| n.strip_suffix(".admin.nexus").map(str::to_owned))
        .filter(|n| !n.is_empty() && !n.contains('.'))
}

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A gateway: serves adapters, dials and accepts federation and cluster links, and
    /// authenticates to the control plane. `hosts` are the names or IP addresses adapters
    /// dial.
    Gateway {
        region: String,
        id: String,
        hosts: Vec<String>,
    },
    /// The control plane's Admin API and config push, at `hosts`.
    ControlPlane { hosts: Vec<String> },
    /// The web console, at `hosts`.
    Console { hosts: Vec<String> },
    /// An operator or automation calling the Admin API (`nexusctl --tls-cert`).
    Admin { name: String },
    /// An application (adapter) presenting a client certificate to gateways that require one
    /// (`--tls-client-ca`); an API key can be bound to it (docs/security.md §4.1).
    Client { name: String },
    /// Any other TLS server at `hosts` (etcd in tests, say), also usable as a client.
    Server { hosts: Vec<String> },
}

impl Role {
    fn params(&self) -> Result<CertificateParams, TlsError> {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (names, cn, usages) = match self {
            Role::Gateway { region, id, hosts } => {
                let mut names = vec![region_name(region), gateway_name(region, id)];
                names.extend(hosts.iter().cloned());
                (
                    names,
                    format!("{id} ({region})"),
                    vec![ServerAuth, ClientAuth],
                )
            }
            Role::ControlPlane { hosts } => (
                hosts.clone(),
                "nexus control plane".to_owned(),
                vec![ServerAuth],
            ),
            Role::Console { hosts } => {
                (hosts.clone(), "nexus console".to_owned(), vec![ServerAuth])
            }
            Role::Admin { name } => (vec![admin_name(name)], name.clone(), vec![ClientAuth]),
            Role::Client { name } => (vec![client_name(name)], name.clone(), vec![ClientAuth]),
            Role::Server { hosts } => (
                hosts.clone(),
                hosts.first().cloned().unwrap_or_default(),
                vec![ServerAuth, ClientAuth],
            ),
        };
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        Ok(params)
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ) for `days`.
    pub fn days(days: u32) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }

    /// From `not_before` to `not_after`, each an RFC 3339 time (`2027-01-31T00:00:00Z`);
    /// a missing start means an hour ago, a missing end `days` after the start. Errors name the
    /// option (`--not-before`/`--not-after`) and what is wrong. An end in the past is allowed:
    /// an expired certificate is how clients are tested to refuse one (`nexus certs`).
    pub fn between(
        not_before: Option<&str>,
        not_after: Option<&str>,
        days: u32,
    ) -> Result<Self, TlsError> {
        let parse = |option: &str, text: &str| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    TlsError::Policy(format!(
                        "{option} {text:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z: {e}"
                    ))
                })
        };
        let not_before = match not_before {
            Some(t) => parse("--not-before", t)?,
            None => time::OffsetDateTime::now_utc() - Duration::from_secs(3600),
        };
        let not_after = match not_after {
            Some(t) => parse("--not-after", t)?,
            None => not_before + Duration::from_secs(u64::from(days) * 86_400),
        };
        if not_after <= not_before {
            return Err(TlsError::Policy(format!(
                "the certificate would end ({}) before it begins ({}): \
                 --not-after must be later than --not-before",
                rfc3339(not_after),
                rfc3339(not_before)
            )));
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }

    /// Whether the validity ended before now (the certificate is expired from the start).
    pub fn is_past(&self) -> bool {
        self.not_after <= time::OffsetDateTime::now_utc()
    }

    /// The end of the validity as an RFC 3339 time, for messages.
    pub fn not_after_text(&self) -> String {
        rfc3339(self.not_after)
    }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A certificate and its key in PEM.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA: signs every certificate of a deployment.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
}

impl CertificateAuthority {
    /// A new CA named `name`, valid for `validity`.
    pub fn generate(name: &str, validity: Validity) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from its certificate and key (to issue or re-issue certificates).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der = crate::load::certs_from_pem(cert_pem.as_bytes(), "CA".as_ref())?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::Missing {
                path: "CA".into(),
                what: "certificate",
            })?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key: keep it offline; only `nexus certs` needs it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `role`, valid for `validity`.
    pub fn issue(&self, role: &Role, validity: Validity) -> Result<IssuedPem, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = role.params()?;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_from_rfc3339_times_and_errors_that_name_the_option() {
        let v = Validity::between(
            Some("2020-01-01T00:00:00Z"),
            Some("2020-01-02T00:00:00Z"),
            397,
        )
        .unwrap();
        assert!(v.is_past());
        assert_eq!(v.not_after - v.not_before, time::Duration::days(1));
        let v = Validity::between(Some("2020-01-01T00:00:00Z"), None, 3).unwrap();
        assert_eq!(v.not_after - v.not_before, time::Duration::days(3));
        let v = Validity::between(None, None, 30).unwrap();
        assert!(!v.is_past());
        let e = Validity::between(None, Some("yesterday"), 1).unwrap_err();
        assert!(e.to_string().contains("--not-after \"yesterday\""), "{e}");
        let e = Validity::between(
            Some("2020-01-02T00:00:00Z"),
            Some("2020-01-01T00:00:00Z"),
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be later"), "{e}");
    }

    #[test]
    fn a_gateway_certificate_names_its_id_and_region_and_a_reloaded_ca_can_issue() {
        let ca = CertificateAuthority::generate("test CA", Validity::days(1)).unwrap();
        let gw = ca
            .issue(
                &Role::Gateway {
                    region: "eu-west".into(),
                    id: "gw-1".into(),
                    hosts: vec!["127.0.0.1".into(), "gw1.example".into()],
                },
                Validity::days(1),
            )
            .unwrap();
        let der = crate::load::certs_from_pem(gw.cert_pem.as_bytes(), "gw".as_ref()).unwrap();
        crate::load::cert_is_for(&der[0], "gw-1.eu-west.fed.nexus").unwrap();
        crate::load::cert_is_for(&der[0], "eu-west.fed.nexus").unwrap();
        crate::load::cert_is_for(&der[0], "gw1.example").unwrap();
        assert!(crate::load::cert_is_for(&der[0], "gw-2.eu-west.fed.nexus").is_err());

        let again = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let admin = again
            .issue(&Role::Admin { name: "ops".into() }, Validity::days(1))
            .unwrap();
        let der = crate::load::certs_from_pem(admin.cert_pem.as_bytes(), "a".as_ref()).unwrap();
        crate::load::cert_is_for(&der[0], "ops.admin.nexus").unwrap();
        assert_eq!(admin_identity(&der[0]).as_deref(), Some("ops"));
        // Issued by the same CA: it verifies against the first CA's certificate.
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(ca.cert_der().clone()).unwrap();
            std::sync::Arc::new(r)
        };
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::provider())
                .build()
                .unwrap();
        verifier
            .verify_client_cert(&der[0], &[], rustls::pki_types::UnixTime::now())
            .unwrap();
    }
}
