//! TLS material for the HTTP/3 + WebTransport endpoint and the TLS
//! listeners ([`CertStore`]).
//!
//! Browsers connect to our self-signed development certificate through
//! `serverCertificateHashes`, so this module both *makes* that certificate
//! and *reports* its SHA-256 for `/api/info` and the startup line.
//!
//! Entry point: [`TlsMaterial::load`] with a [`CertSource`]:
//!
//! - [`CertSource::Dev`]: load `dev-cert.pem` / `dev-key.pem` from a
//!   directory (default `certs/`), or generate them with rcgen when they are
//!   missing, unusable, or have one day or less left.
//! - [`CertSource::Files`]: load operator-supplied PEM files; every problem
//!   is a fatal [`TlsError`].
//!
//! Then [`TlsMaterial::identity`] feeds `wtransport::ServerConfig`, and
//! [`TlsMaterial::needs_rotation`] tells a long-running server when to load
//! again and hand the endpoint a new config (`Endpoint::reload_config`).
//!
//! Everything here is synchronous `std::fs` on two small files; callers run
//! it once at start-up (or, for rotation, inside `spawn_blocking`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use wtransport::tls::rustls;
use wtransport::tls::rustls::pki_types::pem::PemObject;
use wtransport::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use wtransport::tls::{Certificate, CertificateChain, PrivateKey};

mod store;
pub use store::{ALPN_H2, ALPN_H3, ALPN_HTTP11, CertStore};

/// File name of the development certificate inside the certs directory.
pub const DEV_CERT_FILE: &str = "dev-cert.pem";
/// File name of the development private key inside the certs directory.
pub const DEV_KEY_FILE: &str = "dev-key.pem";

//= https://w3c.github.io/webtransport/#custom-certificate-requirements
//# the total length of the validity period MUST NOT exceed two weeks.
//
// The limit is on the certificate's own fields (not_after - not_before), so
// we stay a full day under it: not_before is back-dated (below) so a client
// whose clock runs a little behind still sees a valid certificate, and the
// margin means no rounding or inclusive/exclusive reading of "two weeks" by
// any browser can push us over.
const DEV_VALIDITY: time::Duration = time::Duration::days(13);
/// How far `not_before` is moved into the past, for client clock skew.
const DEV_BACKDATE: time::Duration = time::Duration::hours(1);
/// A development certificate is replaced once it has this much or less left.
const ROTATE_BEFORE: time::Duration = time::Duration::days(1);
/// Hard ceiling checked on stored development certificates.
const MAX_VALIDITY: time::Duration = time::Duration::days(14);
/// Subject alternative names of the development certificate.
const DEV_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Where the server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Self-signed development certificate kept in `dir` (created if needed).
    Dev {
        /// Directory holding `dev-cert.pem` and `dev-key.pem`.
        dir: PathBuf,
    },
    /// Operator-supplied PEM files (`--cert` / `--key`); never generated.
    Files {
        /// PEM certificate chain, leaf first.
        cert: PathBuf,
        /// PEM private key (PKCS#8, `BEGIN PRIVATE KEY`).
        key: PathBuf,
    },
}

/// A certificate chain with its private key, checked to belong together.
///
/// Cloning copies the key bytes; `Debug` never prints them.
#[derive(Clone)]
pub struct TlsMaterial {
    /// DER certificates, leaf first.
    chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER of the private key. Secret.
    key_pkcs8: Vec<u8>,
    /// Lowercase hex SHA-256 of the leaf DER (what browsers pin).
    sha256_hex: String,
    /// Validity of the leaf, read back from its DER.
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// True when this process generated the certificate (not loaded).
    generated: bool,
    /// True for [`CertSource::Dev`]: only those are rotated by us.
    dev: bool,
    /// Where the certificate lives, for error messages.
    cert_path: PathBuf,
}

/// Why TLS material could not be loaded, generated or stored.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certs directory or a PEM file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate file holds no valid X.509 certificate.
    #[error("invalid certificate in {}: {reason}", path.display())]
    InvalidCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no PKCS#8 private key (`BEGIN PRIVATE KEY`).
    #[error(
        "no pkcs#8 private key in {} (convert with `openssl pkcs8 -topk8 -nocrypt`)",
        path.display()
    )]
    InvalidKey {
        /// The key file.
        path: PathBuf,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("private key {} does not match certificate {}: {reason}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls reported.
        reason: String,
    },
    /// A stored development certificate breaks the browser rules
    /// (validity over 14 days or not ECDSA P-256).
    #[error("{} is not a valid development certificate: {reason}", path.display())]
    NotDevCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// rustls refused the server configuration.
    #[error("cannot configure TLS: {0}")]
    Config(rustls::Error),
    /// rcgen failed to generate the development certificate.
    #[error("cannot generate development certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

impl TlsMaterial {
    /// Loads TLS material from `source`; for [`CertSource::Dev`], reuses the
    /// stored certificate while it has more than one day left at `now`, and
    /// generates and stores a new one otherwise (with a warning when the
    /// stored files exist but are unusable).
    pub fn load(source: &CertSource, now: OffsetDateTime) -> Result<Self, TlsError> {
        match source {
            CertSource::Files { cert, key } => {
                let material = Self::from_pem_files(cert, key, false)?;
                if now < material.not_before || now > material.not_after {
                    tracing::warn!(
                        cert = %cert.display(),
                        not_after = %material.not_after,
                        "certificate is outside its validity period; clients will refuse it"
                    );
                }
                Ok(material)
            }
            CertSource::Dev { dir } => Self::load_dev(dir, now),
        }
    }

    /// Lowercase hex SHA-256 of the leaf certificate DER (64 characters),
    /// the value browsers pass in `serverCertificateHashes`.
    pub fn sha256_hex(&self) -> &str {
        &self.sha256_hex
    }

    /// End of the leaf certificate's validity (whole seconds, UTC).
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Whether this process generated the certificate rather than loaded it.
    pub fn generated(&self) -> bool {
        self.generated
    }

    /// For development certificates: whether one day or less is left at
    /// `now` (or the certificate is not valid yet), so it should be replaced
    /// by calling [`TlsMaterial::load`] again. Always false for
    /// operator-supplied files, which we never replace.
    pub fn needs_rotation(&self, now: OffsetDateTime) -> bool {
        self.dev && (self.not_after - now <= ROTATE_BEFORE || now < self.not_before)
    }

    /// Builds the wtransport identity (for `ServerConfig::with_identity`).
    pub fn identity(&self) -> Result<wtransport::Identity, TlsError> {
        let chain = self
            .chain
            .iter()
            .map(|der| Certificate::from_der(der.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid_cert(e.to_string()))?;
        Ok(wtransport::Identity::new(
            CertificateChain::new(chain),
            PrivateKey::from_der_pkcs8(self.key_pkcs8.clone()),
        ))
    }

    /// The chain and key as rustls presents them (for [`CertStore`]).
    pub fn certified_key(&self) -> Result<rustls::sign::CertifiedKey, TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let key = PrivateKeyDer::Pkcs8(self.key_pkcs8.clone().into());
        rustls::sign::CertifiedKey::from_der(self.chain.clone(), key, &provider).map_err(|e| {
            TlsError::KeyMismatch {
                cert: self.cert_path.clone(),
                key: self.cert_path.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// The leaf certificate, DER (what clients pin).
    pub fn leaf_der(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    fn invalid_cert(&self, reason: String) -> TlsError {
        TlsError::InvalidCertificate {
            path: self.cert_path.clone(),
            reason,
        }
    }

    fn load_dev(dir: &Path, now: OffsetDateTime) -> Result<Self, TlsError> {
        let cert = dir.join(DEV_CERT_FILE);
        let key = dir.join(DEV_KEY_FILE);
        if cert.exists() || key.exists() {
            match Self::from_pem_files(&cert, &key, true) {
                Ok(material) if !material.needs_rotation(now) => {
                    tracing::info!(cert = %cert.display(), not_after = %material.not_after,
                        "reusing development certificate");
                    return Ok(material);
                }
                Ok(material) => tracing::info!(not_after = %material.not_after,
                    "development certificate expires within a day; regenerating"),
                Err(error) => tracing::warn!(%error,
                    "stored development certificate is unusable; regenerating"),
            }
        }
        let material = Self::generate(now, DEV_VALIDITY, &cert)?;
        material.store(dir, &cert, &key)?;
        tracing::info!(cert = %cert.display(), not_after = %material.not_after,
            "generated development certificate");
        Ok(material)
    }

    /// Generates a self-signed ECDSA P-256 certificate for [`DEV_SANS`]
    /// valid from `now - DEV_BACKDATE` for `validity`.
    fn generate(
        now: OffsetDateTime,
        validity: time::Duration,
        cert_path: &Path,
    ) -> Result<Self, TlsError> {
        // Whole seconds: X.509 times have no fractions, and we want
        // `not_after()` to equal what a reload reads back from the DER.
        let not_before = now.replace_nanosecond(0).unwrap_or(now) - DEV_BACKDATE;
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(DEV_SANS.map(String::from).to_vec())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ladder development certificate");
        params.not_before = not_before;
        params.not_after = not_before + validity;
        let cert = params.self_signed(&key_pair)?;
        let mut material = Self::from_der(
            vec![cert.der().clone()],
            key_pair.serialize_der(),
            cert_path,
            Path::new("(generated key)"),
        )?;
        material.generated = true;
        material.dev = true;
        Ok(material)
    }

    /// Writes the material as PEM into `dir`; the key gets mode 0600.
    fn store(&self, dir: &Path, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Write { path, source }
        };
        fs::create_dir_all(dir).map_err(write_err(dir))?;
        let key_pem = PrivateKey::from_der_pkcs8(self.key_pkcs8.clone()).to_secret_pem();
        let cert_pem = self
            .identity()?
            .certificate_chain()
            .as_slice()
            .iter()
            .map(Certificate::to_pem)
            .collect::<String>();
        // Key first: a crash in between leaves a pair that fails the
        // key-match check on the next start and is simply regenerated.
        write_atomic(key, key_pem.as_bytes(), true).map_err(write_err(key))?;
        write_atomic(cert, cert_pem.as_bytes(), false).map_err(write_err(cert))
    }

    /// Reads and checks a PEM certificate chain and PKCS#8 key.
    fn from_pem_files(cert: &Path, key: &Path, dev: bool) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::InvalidCertificate {
                path: cert.to_path_buf(),
                reason: e.to_string(),
            })?;
        let Ok(PrivateKeyDer::Pkcs8(key_der)) = PrivateKeyDer::from_pem_slice(&key_pem) else {
            return Err(TlsError::InvalidKey {
                path: key.to_path_buf(),
            });
        };
        let key_der = key_der.secret_pkcs8_der().to_vec();
        if dev {
            // Only P-256 keys are allowed for pinned certificates; the key
            // match below then makes the certificate's key P-256 too.
            let p256 = rcgen::KeyPair::try_from(key_der.as_slice())
                .is_ok_and(|k| k.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256);
            if !p256 {
                let reason = "key is not ecdsa p-256";
                return Err(TlsError::NotDevCertificate {
                    path: cert.to_path_buf(),
                    reason,
                });
            }
        }
        let mut material = Self::from_der(chain, key_der, cert, key)?;
        if dev && material.not_after - material.not_before > MAX_VALIDITY {
            let reason = "validity exceeds 14 days";
            return Err(TlsError::NotDevCertificate {
                path: cert.to_path_buf(),
                reason,
            });
        }
        material.dev = dev;
        Ok(material)
    }

    /// Checks a DER chain and key belong together and extracts the facts
    /// we report (hash and validity).
    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let invalid = |reason: String| TlsError::InvalidCertificate {
            path: cert_path.to_path_buf(),
            reason,
        };
        let leaf = chain
            .first()
            .ok_or_else(|| invalid("no certificate found".into()))?;
        // wtransport's own parser and hash, so we report exactly what its
        // client-side `serverCertificateHashes` check computes.
        let hash = Certificate::from_der(leaf.to_vec())
            .map_err(|e| invalid(e.to_string()))?
            .hash();
        let sha256_hex = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let (not_before, not_after) =
            leaf_validity(leaf).ok_or_else(|| invalid("unreadable validity period".into()))?;
        // The same check rustls runs inside `ServerConfig` building, which
        // wtransport would turn into a panic; here it is an error.
        let provider = rustls::crypto::ring::default_provider();
        let key = PrivateKeyDer::Pkcs8(key_pkcs8.clone().into());
        rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
            TlsError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            chain,
            key_pkcs8,
            sha256_hex,
            not_before,
            not_after,
            generated: false,
            dev: false,
            cert_path: cert_path.to_path_buf(),
        })
    }
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("sha256_hex", &self.sha256_hex)
            .field("not_after", &self.not_after)
            .field("generated", &self.generated)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Writes `bytes` to a sibling temp file, then renames it over `path`, so
/// a reader never sees half a file. `secret` files are created mode 0600.
fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A leftover from a crashed run would keep its old permissions.
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Reads `(notBefore, notAfter)` from a DER certificate, with x509-parser
/// (the parser wtransport itself uses, so both read the same fields).
fn leaf_validity(der: &[u8]) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.to_datetime(),
        validity.not_after.to_datetime(),
    ))
}

#[cfg(test)]
mod tests;
