//! Certificates and mutual TLS.
//!
//! A cluster has its own certificate authority, made by `ferry cert ca` (rcgen). It signs a
//! certificate for every node and every client. Every connection is mutual TLS against that
//! CA: a node accepts only peers presenting a certificate the CA signed, and a peer accepts
//! only a server presenting a *node* certificate (one naming [`NODE_NAME`]). No key is built
//! in anywhere.
//!
//! A credentials directory holds `ca.pem` (the CA certificate), `cert.pem` and `key.pem`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::net::proto::ALPN;

/// The DNS name every node certificate carries and every connection asks for.
pub const NODE_NAME: &str = "ferry-node";

/// Certificates could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The TLS library refused the configuration.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// What a certificate is for: a host node (accepts connections, runs calls) or a client (a
/// driver or a tool such as `ferry status`: opens connections only, never runs calls).
pub use ferry_core::Role;

/// What a certificate says its holder is: its number in the cluster and its role.
pub use ferry_core::Identity;

/// The scheme of the URI naming a holder's identity in its certificate's subject alternative
/// names: `ferry:node:N` or `ferry:client:N`.
const IDENTITY_SCHEME: &str = "ferry:";

/// The identity a certificate carries, from its subject alternative names. The caller has
/// verified the certificate against the cluster CA (rustls does, during the handshake).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, String> {
    let params = rcgen::CertificateParams::from_ca_cert_der(cert)
        .map_err(|e| format!("the certificate cannot be read: {e}"))?;
    for san in &params.subject_alt_names {
        let rcgen::SanType::URI(uri) = san else {
            continue;
        };
        let Some(rest) = uri.as_str().strip_prefix(IDENTITY_SCHEME) else {
            continue;
        };
        let (role, number) = match rest.split_once(':') {
            Some(("node", n)) => (Role::Node, n),
            Some(("client", n)) => (Role::Client, n),
            _ => {
                return Err(format!(
                    "the certificate's identity `{}` is malformed",
                    uri.as_str()
                ));
            }
        };
        let cert = number
            .parse::<u32>()
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("the certificate's number `{number}` is malformed"))?;
        return Ok(Identity { cert, role });
    }
    Err(
        "the certificate names no ferry identity (it was issued by an older `ferry cert`: \
         issue it again)"
            .into(),
    )
}

/// A node's or client's credentials: the cluster CA and its own certificate and key.
#[derive(Clone)]
pub struct Credentials {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    identity: Identity,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes a new file readable by its owner only, whole or not at all: the contents go to a
/// temporary file in the same directory, synced, then linked to `path` (which must not
/// exist: nothing is overwritten).
fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{:016x}", crate::ids::random_u64()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written.map_err(io)
}

/// Refuses a private key file that is not this user's or that other users could read or
/// change.
fn check_key_file(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(invalid(
            path,
            format!(
                "the private key belongs to another user (uid {}); it must be this user's",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(
            path,
            format!(
                "the private key is open to other users (mode {mode:03o}); run `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Checks that `key` is the private key of `cert` (their public keys agree).
fn check_key_matches(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
) -> Result<(), String> {
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &provider)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Credentials {
    /// Reads `ca.pem`, `cert.pem` and `key.pem` from `dir`. Refuses a key file other users
    /// could read or change (or that is another user's), a key that is not the certificate's,
    /// and a certificate that names no ferry identity (number and role).
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let ca_path = dir.join("ca.pem");
        let ca = CertificateDer::from_pem_slice(&read(&ca_path)?)
            .map_err(|e| invalid(&ca_path, format!("not a PEM certificate: {e}")))?;
        let cert_path = dir.join("cert.pem");
        let chain = CertificateDer::pem_slice_iter(&read(&cert_path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&cert_path, format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(invalid(&cert_path, "no certificate in the file"));
        }
        let identity = identity_of(&chain[0]).map_err(|e| invalid(&cert_path, e))?;
        let key_path = dir.join("key.pem");
        check_key_file(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
            .map_err(|e| invalid(&key_path, format!("not a PEM private key: {e}")))?;
        check_key_matches(&chain[0], &key).map_err(|e| {
            invalid(
                &key_path,
                format!("it is not the key of cert.pem ({e}); issue the credentials again"),
            )
        })?;
        Ok(Self {
            ca,
            chain,
            key: Arc::new(key),
            identity,
        })
    }

    /// Who these credentials make their holder: its certificate's number and role.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| TlsError::Setup(format!("the CA certificate is unusable: {e}")))?;
        Ok(Arc::new(roots))
    }

    /// The server side: presents this node's certificate, requires a client certificate
    /// signed by the cluster CA.
    pub fn server_config(&self, idle: Duration) -> Result<quinn::ServerConfig, TlsError> {
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            Self::provider(),
        )
        .build()
        .map_err(|e| setup(&e))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| setup(&e))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| setup(&e))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport(idle));
        Ok(config)
    }

    /// The client side: presents this certificate, accepts only a node certificate signed by
    /// the cluster CA.
    pub fn client_config(&self, idle: Duration) -> Result<quinn::ClientConfig, TlsError> {
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| setup(&e))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| setup(&e))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| setup(&e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport(idle));
        Ok(config)
    }
}

/// Transport settings: keep-alive well inside the idle timeout (so a silent peer is noticed
/// in about `idle`), and windows large enough for bulk object transfers.
fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let idle = idle.max(Duration::from_millis(300));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t.keep_alive_interval(Some(idle / 3));
    // Windows large enough for a fast network's bandwidth-delay product (6 MiB is 1 ms at
    // 48 Gbit/s), and below what the enlarged socket buffers hold (`enlarge_socket_buffers`):
    // with 16/64 MiB windows the kernel dropped datagrams on loopback, which QUIC then treats
    // as congestion.
    t.stream_receive_window(quinn::VarInt::from_u32(4 << 20));
    t.receive_window(quinn::VarInt::from_u32(6 << 20));
    t.send_window(6 << 20);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4096));
    // The core's packets travel one-way (the link acknowledges them itself).
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(4096));
    // Let path MTU discovery go past Ethernet's 1500 bytes where the path allows it (loopback,
    // jumbo-frame networks): fewer packets per byte. Discovery probes, so a smaller path MTU
    // costs nothing but the probes. It only goes as high as the peer accepts: see
    // `endpoint_config`.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// Requested UDP socket buffer size, each way; the kernel caps it at `net.core.rmem_max` and
/// `net.core.wmem_max` (docs/operations.md).
const UDP_BUFFER: usize = 16 << 20;

/// Raises the socket's buffers above the kernel's default (about 208 KiB). With the default,
/// the receive buffer overflows during a bulk transfer whenever the network thread falls
/// behind; the drops read as congestion, and with large datagrams as a path MTU black hole
/// that sends the connection back to 1,200-byte packets.
pub(crate) fn enlarge_socket_buffers(socket: &std::net::UdpSocket) {
    let state = match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("cannot size the UDP socket's buffers: {e}");
            return;
        }
    };
    let recv = state.set_recv_buffer_size(socket.into(), UDP_BUFFER);
    let send = state.set_send_buffer_size(socket.into(), UDP_BUFFER);
    if let Err(e) = recv.and(send) {
        tracing::debug!("cannot size the UDP socket's buffers: {e}");
    }
    tracing::debug!(
        recv = ?state.recv_buffer_size(socket.into()),
        send = ?state.send_buffer_size(socket.into()),
        "UDP socket buffers"
    );
}

/// The largest UDP payload a node sends (after path MTU discovery) and accepts. quinn sends up
/// to 10 datagrams in one segmentation-offload (GSO) call, whose total the kernel caps at
/// 64 KiB; a larger batch fails with EMSGSIZE, which quinn-udp ignores (it expects that only
/// of MTU probes), so every packet of it is lost. 10 × 6,500 stays inside the cap. (With
/// 65,000 the probes passed, the batches vanished, and the connection fell back to 1,200.)
const MAX_UDP_PAYLOAD: u16 = 6_500;
/// quinn 0.11's `MAX_TRANSMIT_SEGMENTS`: datagrams per GSO call.
const QUINN_GSO_SEGMENTS: usize = 10;
const _: () = assert!(MAX_UDP_PAYLOAD as usize * QUINN_GSO_SEGMENTS <= 65_507);

/// Endpoint settings: accept datagrams up to [`MAX_UDP_PAYLOAD`]. A peer never sends more than
/// this advertises (quinn's default is 1,472 bytes, Ethernet's), so without it path MTU
/// discovery stops at Ethernet's size even on loopback.
pub(crate) fn endpoint_config() -> quinn::EndpointConfig {
    let mut e = quinn::EndpointConfig::default();
    e.max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("within QUIC's bounds (1,200..=65,527)");
    e
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "ferry cluster CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut p);
    p
}

/// Valid from the start of the day before today (UTC: a day's margin for clocks that are
/// behind) for ten years.
fn validity(p: &mut rcgen::CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ((y, m, d), (y2, m2, d2)) = validity_dates(secs);
    p.not_before = rcgen::date_time_ymd(y, m, d);
    // 29 February ten years on may not exist: the first of March then.
    p.not_after = if (m2, d2) == (2, 29) {
        rcgen::date_time_ymd(y2, 3, 1)
    } else {
        rcgen::date_time_ymd(y2, m2, d2)
    };
}

/// The first and the last day of validity of a certificate issued `secs` after the epoch.
fn validity_dates(secs: u64) -> ((i32, u8, u8), (i32, u8, u8)) {
    let today = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(today - 1);
    ((y, m, d), (y + 10, m, d))
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Makes a cluster CA in `dir` (`ca.pem`, `ca-key.pem`; the key readable by its owner only).
/// Refuses to overwrite an existing CA.
pub fn create_ca(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Setup(e.to_string()))?;
    let cert = ca_params()
        .self_signed(&key)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    write_private(&dir.join("ca-key.pem"), &key.serialize_pem())?;
    write_private(&dir.join("ca.pem"), &cert.pem())?;
    Ok(())
}

/// The next certificate number of the CA in `ca_dir` (from its `next-number` file, under an
/// exclusive lock, so that concurrent issues get distinct numbers).
fn next_number(ca_dir: &Path) -> Result<u32, TlsError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = ca_dir.join("next-number");
    let io = |source| TlsError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    f.lock().map_err(io)?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io)?;
    let number = match text.trim() {
        "" => 1,
        t => t
            .parse::<u32>()
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| invalid(&path, format!("`{t}` is not a certificate number")))?,
    };
    let next = number
        .checked_add(1)
        .ok_or_else(|| invalid(&path, "the CA has issued all its certificate numbers"))?;
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    writeln!(f, "{next}").map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(number)
}

/// Issues a certificate named `name` for `role`, signed by the CA in `ca_dir`, into `out`
/// (`ca.pem`, `cert.pem`, `key.pem`: a credentials directory for [`Credentials::load`]).
///
/// The certificate carries the CA's next certificate number and the role, as the URI
/// `ferry:node:N` or `ferry:client:N` among its subject alternative names: a node's id
/// carries that number ([`ferry_core::NodeId`]), so peers check every id a connection uses
/// against its certificate.
pub fn issue_cert(ca_dir: &Path, out: &Path, name: &str, role: Role) -> Result<(), TlsError> {
    let ca_key_path = ca_dir.join("ca-key.pem");
    let ca_pem_path = ca_dir.join("ca.pem");
    let ca_pem = String::from_utf8(read(&ca_pem_path)?)
        .map_err(|_| invalid(&ca_pem_path, "not UTF-8 PEM"))?;
    let ca_key_pem = String::from_utf8(read(&ca_key_path)?)
        .map_err(|_| invalid(&ca_key_path, "not UTF-8 PEM"))?;
    check_key_file(&ca_key_path)?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(|e| invalid(&ca_key_path, e))?;
    {
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| invalid(&ca_pem_path, format!("not a PEM certificate: {e}")))?;
        let key_der = PrivateKeyDer::from_pem_slice(ca_key_pem.as_bytes())
            .map_err(|e| invalid(&ca_key_path, format!("not a PEM private key: {e}")))?;
        check_key_matches(&ca_der, &key_der).map_err(|e| {
            invalid(
                &ca_key_path,
                format!("it is not the key of {} ({e})", ca_pem_path.display()),
            )
        })?;
    }
    let ca_params = rcgen::CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(|e| invalid(&ca_pem_path, e))?;
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(|e| invalid(&ca_key_path, e))?;

    let sans = match role {
        Role::Node => vec![NODE_NAME.to_owned()],
        Role::Client => Vec::new(),
    };
    let mut p = rcgen::CertificateParams::new(sans).map_err(|e| TlsError::Setup(e.to_string()))?;
    let number = next_number(ca_dir)?;
    let kind = match role {
        Role::Node => "node",
        Role::Client => "client",
    };
    let uri = rcgen::Ia5String::try_from(format!("{IDENTITY_SCHEME}{kind}:{number}"))
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    p.subject_alt_names.push(rcgen::SanType::URI(uri));
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = match role {
        Role::Node => vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Client => vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    };
    p.use_authority_key_identifier_extension = true;
    validity(&mut p);
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Setup(e.to_string()))?;
    let cert = p
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    std::fs::create_dir_all(out).map_err(|source| TlsError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    write_private(&out.join("key.pem"), &key.serialize_pem())?;
    write_private(&out.join("cert.pem"), &cert.pem())?;
    write_private(&out.join("ca.pem"), &ca_pem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_carry_a_number_of_their_own_and_their_role() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        create_ca(&ca).unwrap();
        let issued: Vec<Identity> = [("a", Role::Node), ("b", Role::Client), ("c", Role::Node)]
            .into_iter()
            .map(|(name, role)| {
                let out = dir.path().join(name);
                issue_cert(&ca, &out, name, role).unwrap();
                Credentials::load(&out).unwrap().identity()
            })
            .collect();
        assert_eq!(
            issued,
            vec![
                Identity {
                    cert: 1,
                    role: Role::Node
                },
                Identity {
                    cert: 2,
                    role: Role::Client
                },
                Identity {
                    cert: 3,
                    role: Role::Node
                },
            ]
        );
    }

    #[test]
    fn a_certificate_without_an_identity_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![NODE_NAME.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let e = identity_of(cert.der()).unwrap_err();
        assert!(e.contains("names no ferry identity"), "{e}");
    }

    /// Certificates are valid at once, whatever the time of year they are issued (the year
    /// once came from an average year length, so late on 31 December it was the next one).
    #[test]
    fn validity_starts_the_day_before_issue_on_every_day() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // 2026-12-31 23:00 UTC.
        let late = 1_798_758_000;
        assert_eq!(civil_from_days(late / 86_400), (2026, 12, 31));
        assert_eq!(validity_dates(late as u64).0, (2026, 12, 30));
        // Every day from 1970 to 2200, at its first and last second.
        let mut prev = civil_from_days(-1);
        for day in 0..84_000i64 {
            let date = civil_from_days(day);
            assert!(date > prev, "{date:?} after {prev:?}");
            for secs in [day * 86_400, day * 86_400 + 86_399] {
                assert_eq!(validity_dates(secs as u64).0, prev);
            }
            prev = date;
        }
    }

    fn issued(role: Role) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        create_ca(&ca).unwrap();
        let out = dir.path().join("a");
        issue_cert(&ca, &out, "a", role).unwrap();
        (dir, ca, out)
    }

    #[test]
    fn a_key_other_users_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, _ca, out) = issued(Role::Client);
        let key = out.join("key.pem");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::load(&out).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Credentials::load(&out).unwrap();
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (dir, ca, out) = issued(Role::Node);
        let other = dir.path().join("b");
        issue_cert(&ca, &other, "b", Role::Node).unwrap();
        std::fs::remove_file(out.join("key.pem")).unwrap();
        std::fs::copy(other.join("key.pem"), out.join("key.pem")).unwrap();
        let e = Credentials::load(&out).unwrap_err().to_string();
        assert!(e.contains("not the key of cert.pem"), "{e}");
    }

    #[test]
    fn issuing_with_a_ca_key_that_is_not_the_cas_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("ca-a"), dir.path().join("ca-b"));
        create_ca(&a).unwrap();
        create_ca(&b).unwrap();
        std::fs::remove_file(a.join("ca-key.pem")).unwrap();
        std::fs::copy(b.join("ca-key.pem"), a.join("ca-key.pem")).unwrap();
        let e = issue_cert(&a, &dir.path().join("x"), "x", Role::Node)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the key of"), "{e}");
        assert!(!dir.path().join("x").join("cert.pem").exists());
    }

    #[test]
    fn private_files_are_written_whole_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_private(&path, "one").unwrap();
        let e = write_private(&path, "two").unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("key.pem")],
            "no temporary file left"
        );
    }
}
