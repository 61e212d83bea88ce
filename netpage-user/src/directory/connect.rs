//! How to reach etcd: endpoints, TLS with client certificates, user authentication.

use std::{path::PathBuf, time::Duration};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::DirError;

/// Where the directory lives and how to authenticate to it.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Client URLs, e.g. `http://10.0.0.1:2379`; `https://` with TLS.
    pub endpoints: Vec<String>,
    /// The key prefix of this directory.
    pub prefix: String,
    /// The CA that signed the servers' certificates (TLS).
    pub cacert: Option<PathBuf>,
    /// This client's certificate and key (TLS client authentication).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd user and password (etcd's role-based authentication).
    pub user: Option<String>,
    pub password: Option<String>,
    /// How long one request may take before it fails.
    pub request_timeout: Duration,
}

/// The request timeout unless told otherwise: long enough for an election in a cluster.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl EtcdOptions {
    /// Options for `endpoints` (comma-separated URLs) under `prefix`, without TLS or user.
    pub fn new(endpoints: &str, prefix: &str) -> Self {
        Self {
            endpoints: endpoints
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect(),
            prefix: prefix.to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ..Default::default()
        }
    }

    /// The endpoints as one string, for messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    fn tls(&self) -> Result<Option<TlsOptions>, DirError> {
        if self.cacert.is_none() && self.cert.is_none() && self.key.is_none() {
            return Ok(None);
        }
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| DirError::TlsFile {
                path: p.clone(),
                source,
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err(DirError::Usage(
                "--etcd-cert and --etcd-key go together: give both (the client certificate and its key)"
                    .into(),
            )),
        }
        if self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(DirError::Usage(format!(
                "TLS options were given but an endpoint is plain http ({}): use https:// URLs",
                self.endpoints_text()
            )));
        }
        Ok(Some(tls))
    }

    /// Connects (lazily: a request is what first reaches a server).
    pub async fn connect(&self) -> Result<Client, DirError> {
        if self.endpoints.is_empty() {
            return Err(DirError::Usage(
                "--etcd needs at least one endpoint URL".into(),
            ));
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.request_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(tls) = self.tls()? {
            opts = opts.with_tls(tls);
        }
        if let Some(user) = &self.user {
            let password = self.password.clone().ok_or_else(|| {
                DirError::Usage(format!(
                    "etcd user {user} needs a password (--etcd-password or NETPAGE_ETCD_PASSWORD)"
                ))
            })?;
            opts = opts.with_user(user.clone(), password);
        }
        Client::connect(&self.endpoints, Some(opts))
            .await
            .map_err(|source| {
                match DirError::failed("the connection", self.endpoints_text(), source) {
                    DirError::Etcd {
                        endpoints, source, ..
                    } => DirError::Connect { endpoints, source },
                    refused => refused,
                }
            })
    }
}
