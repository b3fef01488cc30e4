//! One SSH session to the endpoint: connect, check the host key, log in, ask for the remote
//! forward (at once, or when the rental's port is known), then carry each forwarded connection to
//! the local sshd until the session ends. Reconnecting is not this module's business: `tunnel`
//! decides when to open the next session.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use russh::client::{self, AuthResult, ChannelOpenHandle, DisconnectReason, Handle, Msg};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure, Disconnect};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::secret::Secret;
use crate::settings::{ClientKey, Credentials, HostKeyPin, TunnelSettings};

/// A TCP connect that takes longer is treated as a dead route, not waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Handshake, login and forward request together. Without it a server that accepts TCP but never
/// speaks (a hung sshd, a half-dead link) would hold the tunnel in `Connecting` forever.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// A polite goodbye must not hold up a stop when the link is already dead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The container's sshd is on the same host: if it does not answer quickly it is not running.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("cannot reach {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("no TCP connection to {endpoint} within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { endpoint: String },
    #[error(
        "{endpoint} did not complete the SSH handshake, login and forward within {} s",
        ESTABLISH_TIMEOUT.as_secs()
    )]
    EstablishTimeout { endpoint: String },
    #[error(
        "host key mismatch for {endpoint}: expected {expected}, the server presented {seen}; refusing to connect"
    )]
    HostKeyMismatch {
        endpoint: String,
        expected: HostKeyPin,
        seen: String,
    },
    #[error("the server rejected {method} authentication for user {user}")]
    AuthRejected { user: String, method: &'static str },
    #[error(
        "the server refused the remote forward {bind}:{port} (another session may still hold the port)"
    )]
    ForwardRefused { bind: String, port: u16 },
    #[error("SSH error while {during} with {endpoint}: {source}")]
    Ssh {
        during: &'static str,
        endpoint: String,
        #[source]
        source: russh::Error,
    },
    #[error("the server stopped answering keepalives (dead link)")]
    KeepaliveTimeout,
    #[error("the server closed the session: {0}")]
    ServerDisconnected(String),
    #[error("the connection to the server was lost: {0}")]
    Lost(russh::Error),
}

/// What the SSH library's callbacks can fail with. Kept apart from `SessionError` because the
/// library needs `From<russh::Error>` and has no endpoint to name.
#[derive(Debug)]
pub enum HandlerError {
    Ssh(russh::Error),
    HostKeyMismatch { expected: HostKeyPin, seen: String },
    ServerDisconnected(String),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        Self::Ssh(e)
    }
}

impl HandlerError {
    fn during(self, during: &'static str, endpoint: &str) -> SessionError {
        match self {
            Self::Ssh(source) => SessionError::Ssh {
                during,
                endpoint: endpoint.to_owned(),
                source,
            },
            Self::HostKeyMismatch { expected, seen } => SessionError::HostKeyMismatch {
                endpoint: endpoint.to_owned(),
                expected,
                seen,
            },
            Self::ServerDisconnected(why) => SessionError::ServerDisconnected(why),
        }
    }
}

/// A session, logged in; its remote forward is asked for with [`Session::forward`].
pub struct Session {
    handle: Handle<Client>,
    bind_address: String,
    endpoint: String,
    /// The forwarded port, shared with the handler (0 until granted: every channel refused).
    forwarded: Arc<AtomicU16>,
    /// Dropped with the session: every pipe watches it and stops, so no forwarded connection
    /// outlives the SSH session that carried it.
    _pipes_alive: watch::Sender<()>,
}

impl Session {
    /// Connects, verifies and logs in.
    pub async fn open(settings: &TunnelSettings) -> Result<Self, SessionError> {
        let endpoint = settings.endpoint();
        let tcp = match timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((settings.server.as_str(), settings.server_port.get())),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(SessionError::Connect { endpoint, source }),
            Err(_) => return Err(SessionError::ConnectTimeout { endpoint }),
        };
        // Renters type through this tunnel: Nagle's delay would be felt on every keystroke.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match timeout(ESTABLISH_TIMEOUT, Self::establish(settings, tcp, &endpoint)).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::EstablishTimeout { endpoint }),
        }
    }

    async fn establish(
        settings: &TunnelSettings,
        tcp: TcpStream,
        endpoint: &str,
    ) -> Result<Self, SessionError> {
        let config = Arc::new(ssh_config(settings));
        let (pipes_alive, pipes_watch) = watch::channel(());
        let forwarded = Arc::new(AtomicU16::new(0));
        let client = Client {
            pin: settings.host_key.clone(),
            local_addr: settings.local_addr,
            forwarded: Arc::clone(&forwarded),
            pipes_alive: pipes_watch,
        };
        let mut handle = client::connect_stream(config, tcp, client)
            .await
            .map_err(|e| e.during("handshaking", endpoint))?;

        authenticate(&mut handle, &settings.user, &settings.credentials, endpoint).await?;
        info!(user = %settings.user, "logged in to the tunnel endpoint");
        Ok(Self {
            handle,
            bind_address: settings.bind_address.clone(),
            endpoint: endpoint.to_owned(),
            forwarded,
            _pipes_alive: pipes_alive,
        })
    }

    /// Asks for the remote forward of `port`. A refusal is an error: a session without its
    /// forward is of no use to a renter.
    pub async fn forward(&mut self, port: NonZeroU16) -> Result<(), SessionError> {
        // Known to the handler before the request: the endpoint may open the first channel before
        // this task sees the grant.
        self.forwarded.store(port.get(), Ordering::Relaxed);
        let bind = self.bind_address.as_str();
        let asked = self.handle.tcpip_forward(bind, u32::from(port.get()));
        let answer = timeout(ESTABLISH_TIMEOUT, asked).await;
        if !matches!(answer, Ok(Ok(_))) {
            self.forwarded.store(0, Ordering::Relaxed);
        }
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(russh::Error::RequestDenied)) => {
                let _ = self
                    .handle
                    .disconnect(Disconnect::ByApplication, "forward refused", "")
                    .await;
                return Err(SessionError::ForwardRefused {
                    bind: self.bind_address.clone(),
                    port: port.get(),
                });
            }
            Ok(Err(source)) => {
                return Err(SessionError::Ssh {
                    during: "requesting the remote forward",
                    endpoint: self.endpoint.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(SessionError::EstablishTimeout {
                    endpoint: self.endpoint.clone(),
                });
            }
        }
        info!(bind = %self.bind_address, port = port.get(), "remote forward granted");
        Ok(())
    }

    /// Waits until the session ends on its own and says why.
    pub async fn closed(&mut self) -> SessionError {
        match (&mut self.handle).await {
            Ok(()) => SessionError::ServerDisconnected("no reason given".into()),
            Err(HandlerError::Ssh(russh::Error::KeepaliveTimeout)) => {
                SessionError::KeepaliveTimeout
            }
            Err(HandlerError::Ssh(e)) => SessionError::Lost(e),
            Err(HandlerError::ServerDisconnected(why)) => SessionError::ServerDisconnected(why),
            Err(HandlerError::HostKeyMismatch { expected, seen }) => {
                // Only possible on a re-key that presents another key: as bad as at login.
                SessionError::ServerDisconnected(format!(
                    "host key changed during the session: expected {expected}, got {seen}"
                ))
            }
        }
    }

    /// Ends the session politely, so the endpoint frees the port at once rather than after its
    /// own keepalives time out.
    pub async fn close(mut self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "connector stopping", "")
            .await;
        // `disconnect` only queues the message: wait (briefly) for the session task to send it,
        // or a process exiting right after would drop it unsent.
        let _ = timeout(CLOSE_TIMEOUT, &mut self.handle).await;
    }
}

fn ssh_config(settings: &TunnelSettings) -> client::Config {
    let keepalive_limit = settings
        .keepalive_interval
        .saturating_mul(u32::try_from(settings.keepalive_max + 2).unwrap_or(u32::MAX));
    client::Config {
        keepalive_interval: Some(settings.keepalive_interval),
        keepalive_max: settings.keepalive_max,
        // A backstop for what keepalives cannot cover: they start only after login, so a server
        // that stalls mid-handshake would otherwise keep the library's session task (and its
        // socket) alive after `ESTABLISH_TIMEOUT` gave up on it. Longer than the keepalive limit,
        // so that a dead link after login is still reported as one.
        inactivity_timeout: Some(ESTABLISH_TIMEOUT.max(keepalive_limit)),
        nodelay: true,
        ..client::Config::default()
    }
}

async fn authenticate(
    handle: &mut Handle<Client>,
    user: &str,
    credentials: &Credentials,
    endpoint: &str,
) -> Result<(), SessionError> {
    match credentials {
        Credentials::Password(password) => {
            authenticate_password(handle, user, password, endpoint).await
        }
        Credentials::Key(key) => authenticate_key(handle, user, key, endpoint).await,
        Credentials::KeyOrPassword { key, password } => {
            match authenticate_key(handle, user, key, endpoint).await {
                Err(SessionError::AuthRejected { .. }) => {
                    debug!("key refused; trying the password");
                    authenticate_password(handle, user, password, endpoint).await
                }
                other => other,
            }
        }
    }
}

async fn authenticate_password(
    handle: &mut Handle<Client>,
    user: &str,
    password: &Secret,
    endpoint: &str,
) -> Result<(), SessionError> {
    let result = handle
        .authenticate_password(user, password.expose())
        .await
        .map_err(|source| ssh_error("authenticating", endpoint, source))?;
    auth_outcome(&result, user, "password")
}

async fn authenticate_key(
    handle: &mut Handle<Client>,
    user: &str,
    key: &ClientKey,
    endpoint: &str,
) -> Result<(), SessionError> {
    let key = key.key();
    // For RSA the signature hash must be one the server accepts (OpenSSH refuses SHA-1); for other
    // key types the hash is part of the algorithm and this is not asked.
    let hash = if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(|source| ssh_error("negotiating the RSA hash", endpoint, source))?
            .flatten()
            .or(Some(HashAlg::Sha256))
    } else {
        None
    };
    let result = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash))
        .await
        .map_err(|source| ssh_error("authenticating", endpoint, source))?;
    auth_outcome(&result, user, "public key")
}

fn auth_outcome(result: &AuthResult, user: &str, method: &'static str) -> Result<(), SessionError> {
    if result.success() {
        Ok(())
    } else {
        Err(SessionError::AuthRejected {
            user: user.to_owned(),
            method,
        })
    }
}

fn ssh_error(during: &'static str, endpoint: &str, source: russh::Error) -> SessionError {
    SessionError::Ssh {
        during,
        endpoint: endpoint.to_owned(),
        source,
    }
}

/// The SSH library's view of us: checks the host key and takes the forwarded connections.
pub struct Client {
    pin: Option<HostKeyPin>,
    local_addr: SocketAddr,
    forwarded: Arc<AtomicU16>,
    pipes_alive: watch::Receiver<()>,
}

// Two of russh's callbacks answer at once: async fns that never wait, which clippy flags from Rust 1.99
// (unused_async_trait_impl, a lint older clippy does not know: hence unknown_lints).
#[allow(unknown_lints, clippy::unused_async_trait_impl)]
impl client::Handler for Client {
    type Error = HandlerError;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key_data = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key(),
        };
        let seen = key_data.fingerprint(HashAlg::Sha256).to_string();
        match &self.pin {
            Some(pin) if pin.matches(&seen) => {
                info!(fingerprint = %seen, "server host key matches the pin");
                Ok(true)
            }
            // An error, not `Ok(false)`: the library would turn `false` into a bare "unknown key"
            // and the owner would not learn which key the server presented.
            Some(pin) => Err(HandlerError::HostKeyMismatch {
                expected: pin.clone(),
                seen,
            }),
            None => {
                info!(fingerprint = %seen, "server host key accepted (no hostKey pin set)");
                Ok(true)
            }
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        _connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        // We asked for one port; a channel for any other (or before the grant) is not ours.
        let ours = self.forwarded.load(Ordering::Relaxed);
        if ours == 0 || connected_port != u32::from(ours) {
            warn!(
                connected_port,
                "server opened a forwarded channel for a port we did not ask for; rejecting"
            );
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let origin = format!("{originator_address}:{originator_port}");
        // The local connect happens off the session's task so one slow connection cannot stall
        // the others (or the keepalives).
        tokio::spawn(pipe(
            channel,
            reply,
            self.local_addr,
            self.pipes_alive.clone(),
            origin,
        ));
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        // Returned as errors so that the handle's result says why the session ended.
        match reason {
            DisconnectReason::ReceivedDisconnect(info) => Err(HandlerError::ServerDisconnected(
                format!("{:?}: {}", info.reason_code, info.message),
            )),
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// Carries one forwarded connection to the local sshd and back.
async fn pipe(
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    local_addr: SocketAddr,
    mut session_alive: watch::Receiver<()>,
    origin: String,
) {
    let mut local = match timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(local_addr)).await {
        Ok(Ok(stream)) => stream,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            // Rejecting tells the renter's ssh at once instead of leaving it hanging.
            warn!(
                %local_addr,
                error = %why,
                "cannot reach the local sshd; refusing a forwarded connection"
            );
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    let _ = local.set_nodelay(true);
    reply.accept().await;
    debug!(%origin, "forwarded connection opened");
    let mut remote = channel.into_stream();
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut remote, &mut local) => match result {
            Ok((to_local, to_remote)) => {
                debug!(%origin, to_local, to_remote, "forwarded connection closed");
            }
            Err(e) => debug!(%origin, error = %e, "forwarded connection ended with an error"),
        },
        _ = session_alive.changed() => {
            debug!(%origin, "session ended; dropping its forwarded connection");
        }
    }
}
