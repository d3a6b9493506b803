//! Development-certificate tests: generation, reuse, rotation, damage.

use super::*;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use wtransport::tls::client::ServerHashVerification;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ladder-tls-{}-{n}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Self(dir)
    }
    fn source(&self) -> CertSource {
        CertSource::Dev {
            dir: self.0.clone(),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
}

fn leaf(material: &TlsMaterial) -> CertificateDer<'static> {
    material.chain[0].clone()
}

#[test]
fn generated_cert_meets_browser_rules() {
    let dir = TempDir::new("rules");
    let now = OffsetDateTime::now_utc();
    let m = TlsMaterial::load(&dir.source(), now).unwrap();
    assert!(m.generated());
    assert_eq!(m.sha256_hex().len(), 64);
    assert!(
        m.sha256_hex()
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    );
    assert_eq!(m.not_after - m.not_before, DEV_VALIDITY);
    assert!(m.not_after - m.not_before <= time::Duration::days(14));

    // wtransport's client-side serverCertificateHashes verifier checks
    // ECDSA P-256, validity <= 14 days, current time, and the hash.
    let hash = m.identity().unwrap().certificate_chain().as_slice()[0].hash();
    let verifier = ServerHashVerification::new([hash]);
    let name = ServerName::try_from("localhost").unwrap();
    verifier
        .verify_server_cert(&leaf(&m), &[], &name, &[], unix(now))
        .unwrap();

    // webpki, with the certificate as its own trust anchor, checks the
    // SANs and the validity bounds to the second.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf(&m)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let check = |name: &str, at: OffsetDateTime| {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        webpki.verify_server_cert(&leaf(&m), &[], &name, &[], unix(at))
    };
    for san in DEV_SANS {
        check(san, now).unwrap();
    }
    assert!(check("example.com", now).is_err());
    assert!(check("127.0.0.2", now).is_err());
    let second = time::Duration::seconds(1);
    check("localhost", m.not_after).unwrap();
    assert!(check("localhost", m.not_after + second).is_err());
    check("localhost", m.not_before).unwrap();
    assert!(check("localhost", m.not_before - second).is_err());
}

#[test]
fn files_are_pem_and_key_is_private() {
    let dir = TempDir::new("files");
    TlsMaterial::load(&dir.source(), OffsetDateTime::now_utc()).unwrap();
    let cert = fs::read_to_string(dir.0.join(DEV_CERT_FILE)).unwrap();
    let key = fs::read_to_string(dir.0.join(DEV_KEY_FILE)).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.0.join(DEV_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn fresh_cert_is_reused() {
    let dir = TempDir::new("reuse");
    let now = OffsetDateTime::now_utc();
    let first = TlsMaterial::load(&dir.source(), now).unwrap();
    let later = now + time::Duration::days(11);
    let second = TlsMaterial::load(&dir.source(), later).unwrap();
    assert!(!second.generated());
    assert_eq!(first.sha256_hex(), second.sha256_hex());
    assert_eq!(first.not_after(), second.not_after());
    assert!(!second.needs_rotation(later));
}

#[test]
fn cert_with_a_day_or_less_left_is_regenerated() {
    let dir = TempDir::new("expiring");
    let now = OffsetDateTime::now_utc();
    let (cert, key) = (dir.0.join(DEV_CERT_FILE), dir.0.join(DEV_KEY_FILE));
    let short = TlsMaterial::generate(now, time::Duration::hours(20), &cert).unwrap();
    short.store(&dir.0, &cert, &key).unwrap();
    assert!(short.needs_rotation(now));

    let fresh = TlsMaterial::load(&dir.source(), now).unwrap();
    assert!(fresh.generated());
    assert_ne!(fresh.sha256_hex(), short.sha256_hex());
    assert!(!fresh.needs_rotation(now));
    // Thirteen days later the same certificate is due.
    assert!(fresh.needs_rotation(now + time::Duration::days(12)));
}

#[test]
fn corrupt_or_mismatched_files_are_regenerated() {
    let dir = TempDir::new("corrupt");
    let now = OffsetDateTime::now_utc();
    let first = TlsMaterial::load(&dir.source(), now).unwrap();
    fs::write(dir.0.join(DEV_CERT_FILE), "not a certificate").unwrap();
    let second = TlsMaterial::load(&dir.source(), now).unwrap();
    assert!(second.generated());
    assert_ne!(first.sha256_hex(), second.sha256_hex());

    // A key from another certificate must not pass as this one's.
    let other = TempDir::new("other");
    TlsMaterial::load(&other.source(), now).unwrap();
    fs::copy(other.0.join(DEV_KEY_FILE), dir.0.join(DEV_KEY_FILE)).unwrap();
    let err =
        TlsMaterial::from_pem_files(&dir.0.join(DEV_CERT_FILE), &dir.0.join(DEV_KEY_FILE), true)
            .unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    let third = TlsMaterial::load(&dir.source(), now).unwrap();
    assert!(third.generated());
    third.identity().unwrap();
}

#[test]
fn explicit_files_load_and_errors_carry_the_path() {
    let dir = TempDir::new("explicit");
    let now = OffsetDateTime::now_utc();
    let dev = TlsMaterial::load(&dir.source(), now).unwrap();
    let files = CertSource::Files {
        cert: dir.0.join(DEV_CERT_FILE),
        key: dir.0.join(DEV_KEY_FILE),
    };
    let loaded = TlsMaterial::load(&files, now).unwrap();
    assert_eq!(loaded.sha256_hex(), dev.sha256_hex());
    assert!(!loaded.generated());
    assert!(!loaded.needs_rotation(now + time::Duration::days(100)));

    let missing = dir.0.join("missing.pem");
    let files = CertSource::Files {
        cert: missing.clone(),
        key: dir.0.join(DEV_KEY_FILE),
    };
    match TlsMaterial::load(&files, now) {
        Err(TlsError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected a read error, got {other:?}"),
    }
    let files = CertSource::Files {
        cert: dir.0.join(DEV_CERT_FILE),
        key: dir.0.join(DEV_CERT_FILE),
    };
    assert!(matches!(
        TlsMaterial::load(&files, now),
        Err(TlsError::InvalidKey { .. })
    ));
}

#[test]
fn hash_matches_wtransport_identity() {
    let dir = TempDir::new("hash");
    let m = TlsMaterial::load(&dir.source(), OffsetDateTime::now_utc()).unwrap();
    let identity = m.identity().unwrap();
    let digest = identity.certificate_chain().as_slice()[0].hash();
    let dotted = digest.fmt(wtransport::tls::Sha256DigestFmt::DottedHex);
    assert_eq!(dotted.replace(':', ""), m.sha256_hex());
    // And a real ServerConfig builds (rustls accepts the key pair).
    let _config = wtransport::ServerConfig::builder()
        .with_bind_address("127.0.0.1:0".parse().unwrap())
        .with_identity(identity)
        .build();
}

#[test]
fn validity_is_read_back_from_der() {
    let dir = TempDir::new("validity");
    let now = OffsetDateTime::now_utc();
    let m = TlsMaterial::load(&dir.source(), now).unwrap();
    let (not_before, not_after) = leaf_validity(&leaf(&m)).unwrap();
    assert_eq!(
        not_before,
        now.replace_nanosecond(0).unwrap() - DEV_BACKDATE
    );
    assert_eq!(not_after - not_before, DEV_VALIDITY);
    assert_eq!(leaf_validity(b"\x30\x03\x02\x01"), None);
    assert_eq!(leaf_validity(b""), None);
}
